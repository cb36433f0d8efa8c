"""kiln's proof harness: benchmarks against docker-compose and Docker Swarm (`bench/run`) and a
fault-injection suite (`bench/faults`). See bench/README.md."""
