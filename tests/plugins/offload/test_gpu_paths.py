"""The GPU-only paths, planned on a CPU: what each assumes is written next to its code, and checked here as far
as a machine without CUDA can (bench/gpu.py runs them on a card)."""

from __future__ import annotations

import torch

from tuner_offload.streaming import Schedule, Unit


class Copies:
    """Stands in for a CUDA side stream and diffusers' ModuleGroups: records the order of copies and waits."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def synchronize(self) -> None:
        self.events.append("wait")

    def group(self, name: str):  # noqa: ANN201
        events = self.events

        class Group:
            def onload_(self) -> None:
                events.append(f"in {name}")

            def offload_(self) -> None:
                events.append(f"out {name}")

        return Group()


def test_a_streamed_forward_waits_for_each_prefetched_copy_before_using_or_dropping_it():
    copies = Copies()
    units = []
    for i in range(3):
        layer = torch.nn.Linear(4, 4)
        units.append(Unit(f"b{i}", [], [], layer, layer, group=copies.group(f"b{i}"), index=i, onloaded=False))
    schedule = Schedule(units, stream=copies)
    with torch.no_grad():  # no backward hooks: the forward order alone
        for unit in units:
            copies.events.append(f"run {unit.name}")
            schedule.before_forward(unit)
            schedule.after_forward(unit, torch.zeros(1))
    order = copies.events
    for unit in units:
        use, arrived = order.index(f"run {unit.name}"), order.index(f"in {unit.name}")
        # the copy of a unit is waited for after it was started and before the unit is used or sent out
        assert "wait" in order[arrived:order.index(f"out {unit.name}")], order
    # the next unit's copy starts while the current one runs (before it is sent out): the overlap
    assert order.index("in b1") < order.index("out b0") and order.index("in b2") < order.index("out b1"), order
    assert order[-1] == "out b2" and use < len(order)


def test_the_cuda_attention_kernels_need_nothing_but_their_package_on_a_bf16_cuda_run():
    from tuner_attention.backends import BACKENDS, problems

    for name, backend in BACKENDS.items():
        if not backend.cuda or name.endswith("-hub"):  # a Hub kernel's check downloads it: no network here
            continue
        missing = problems(name, torch.device("cuda"), "bf16")
        assert not any("CUDA device" in m or "mixed_precision" in m for m in missing), (name, missing)
        if backend.half:  # float32 is refused at start, before any kernel runs
            assert any("mixed_precision" in m for m in problems(name, torch.device("cuda"), "no")), name
        if not backend.backward:
            assert name.startswith("sageattention"), "only SageAttention serves validation alone"


def test_the_quanto_weight_types_exist_in_optimum_quanto():
    import optimum.quanto as quanto

    from tuner_quantize.quanto import QTYPES

    for precision, qtype in QTYPES.items():
        assert hasattr(quanto, qtype), precision


def test_the_fsdp2_plan_of_docs_scale_md_names_a_block_class_of_the_model_and_builds():
    """accelerate's FSDP2 plugin with the settings docs/scale.md gives, and the block class it wraps."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from diffusers import WanTransformer3DModel
    from torch.distributed.fsdp import fully_shard  # noqa: F401  (FSDP2's entry point exists in this torch)

    from tuner_wan.tiny import TINY_TRANSFORMER

    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
        transformer_cls_names_to_wrap=["WanTransformerBlock"], reshard_after_forward=True,
        state_dict_type="FULL_STATE_DICT", cpu_ram_efficient_loading=False,
    )
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    model = WanTransformer3DModel(**TINY_TRANSFORMER)
    wrapped = {type(m).__name__ for m in model.modules()}
    assert "WanTransformerBlock" in wrapped
