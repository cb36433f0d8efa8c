"""usecases/images.py: the VM images on this host, as `kiln image list` and the API show them."""

from __future__ import annotations

from kiln.usecases import images
from unit.world import World


def test_a_host_without_vm_images_lists_none(w: World):
    assert images.listing(w.ctx) == []
