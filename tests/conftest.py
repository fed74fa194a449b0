import pytest

pytest_plugins = ["tuner.testing"]


@pytest.fixture(scope="session")
def tuner_plugin() -> str:
    # The CLI and end-to-end tests run on the tiny Wan model.
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
