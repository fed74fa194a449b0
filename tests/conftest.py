import pytest

pytest_plugins = ["tuner.testing.fixtures"]


@pytest.fixture(scope="session")
def tuner_plugin() -> str:
    # make_run's family: the tiny Wan, for tests that need a real model (the core's tests through the CLI take toy_run).
    return "wan"


@pytest.fixture(scope="session")
def tiny_dino(tmp_path_factory):
    """A tiny random DINOv2 in transformers' layout (no download), CREPA's teacher: 32 wide, 2x2 patches at 28 pixels."""
    import torch
    from transformers import Dinov2Config, Dinov2Model

    folder = tmp_path_factory.mktemp("dino") / "dinov2-tiny"
    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2, patch_size=14, image_size=28)
    Dinov2Model(config).save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def _release_memory_after_truewidth(request):
    """After a true-width test, give its models' memory back before the next one (a 14B-width block is 1.2 GB)."""
    yield
    if request.node.get_closest_marker("truewidth") is None:
        return
    import ctypes
    import gc
    import os

    gc.collect()
    try:  # glibc keeps freed heap pages; hand them back so the next test does not stack on them
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    if os.environ.get("TUNER_TRUEWIDTH_RSS"):
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        print(f"\n{request.node.name}: RSS after {rss / 2**30:.2f} GiB")
