"""The commented starter spec `kiln init` writes."""

STARTER = """\
# kiln.yaml: how this app is baked into an image and run. Reference: docs/spec.md
app: {app}

build:
  context: .                 # files sent to the builder (honours .dockerignore)
  # dockerfile: Dockerfile   # either a Dockerfile (start it with: ARG KILN_BASE / FROM $KILN_BASE)
  steps:                     # ...or Dockerfile steps run on top of the baked base
    - COPY . /app
  base:                      # an OS image baked from Debian packages, no registry needed
    packages: [python3]

services:
  web:
    command: [python3, /app/app.py]
    port: 8000               # where the service listens inside its instance
    replicas: 2
    healthcheck:
      http: /health          # or: tcp: true, or: command: [prog, arg]
      interval: 1s
      deadline: 30s          # a new instance that is not healthy by then aborts the rollout
    environment:
      GREETING: hello
    writable: [/tmp]         # tmpfs; the rest of the filesystem is read-only

environments:
  production:
    port: 8080               # the router's public port, on 127.0.0.1 unless 'bind' says otherwise
  staging:
    port: 8081
    services:
      web: {{replicas: 1}}
"""
