"""The compile gate: every kernel specialization the dispatcher can launch compiles for
Hopper (sm_90) and Ampere (sm_80) without a GPU, without register spills (float32 included),
within shared memory, and on Hopper its 16-bit matrix products use ``wgmma``. The verdict is
``compile_gate.problems``, the same function ``flashref compile-report`` calls.

Blackwell (sm_100: B200/GB200; sm_120: RTX 50xx) has a covering set of its own
(``blackwell_matrix``): on sm_100 16-bit matrix products must use ``tcgen05``; sm_120 has
only ``mma.sync``, and 99 KiB of shared memory per block.

CI (marker ``compile``, also under triton 3.6) compiles a representative matrix: each kernel's
default configuration at one head dim per padded width (40 -> 64, 96 -> 128, 256), for
bfloat16 and float32 (float16 at 96), causal; at 256 the dK/dV kernel is its two launches,
"backward_dk" and "backward_dv", also float16 non-causal. ``slow`` compiles everything:
``GATE_HEAD_DIMS`` x dtypes x causal x every configuration of every table.
"""

import dataclasses

import pytest
import torch

from flashref.kernels.compile_gate import (
    CONSTEXPR_DEFAULTS,
    DELTA_CONFIG,
    VARIANTS,
    CompileRow,
    Specialization,
    compile_specializations,
    launch_names,
    problems,
    resource_usage,
    specializations,
)
from flashref.kernels.config_dispatch import dispatcher_configs
from flashref.kernels.tile_tables import KERNEL_NAMES, KernelConfig, configs_for


def assert_clean(rows: list[CompileRow]):
    bad = [f"{r.kernel} d={r.head_dim} {r.dtype} causal={r.causal} {r.variant} {r.BLOCK_M}x{r.BLOCK_N} "
           f"w{r.num_warps} s{r.num_stages} regs={r.registers}: {', '.join(problems(r))}"
           for r in rows if problems(r)]
    for r in rows:
        print(f"{r.arch} {r.kernel} d={r.head_dim} {r.dtype} {r.BLOCK_M}x{r.BLOCK_N} w{r.num_warps} "
              f"s{r.num_stages}: regs {r.registers}, smem {r.shared_memory}, spills {r.spills}, "
              f"mma {r.mma}")
    assert not bad, "\n".join(bad)


def default_specs(kernel, head_dim, dtype, arch=None, causal=True, variant="plain"):
    """The default configuration of each launch ``kernel`` makes at this head dim on ``arch``
    (its own rows first: ``configs_for(..., arch=)``), causal by default."""
    return [Specialization(name, head_dim, dtype, causal, configs_for(name, head_dim, getattr(torch, dtype), arch=arch)[0],
                           variant)
            for name in launch_names(kernel, head_dim)]


def ci_matrix() -> list[Specialization]:
    specs = [spec
             for kernel in KERNEL_NAMES
             for head_dim, dtype in [(40, "bfloat16"), (96, "bfloat16"), (256, "bfloat16"),
                                     (40, "float32"), (96, "float32"), (256, "float32"), (96, "float16")]
             for spec in default_specs(kernel, head_dim, dtype)]
    specs.append(Specialization("backward_delta", 96, "bfloat16", False, DELTA_CONFIG))
    return specs


@pytest.mark.compile
@pytest.mark.parametrize("arch", ["sm_90", "sm_80"])
def test_default_configs_compile_clean(arch, monkeypatch):
    import flashref.kernels.compile_gate as gate

    monkeypatch.setattr(gate, "specializations", lambda **_: ci_matrix())
    rows = compile_specializations(arch)
    assert len(rows) == len(ci_matrix())
    assert all(r.arch == arch and r.registers > 0 for r in rows)
    assert_clean(rows)


# A covering set for Blackwell, per arch: every kernel, every head-dim bucket, each 16-bit
# dtype and float32, causal and not, and (sm_100, where the dispatcher takes it) the
# tensor-descriptor path; the arch's own rows (tile_tables.ARCH_TABLES) are among them.
BLACKWELL_CASES = {
    "sm_100": [("forward", 96, "bfloat16", True, "tma"), ("backward_dq", 256, "float16", True, "tma"),
               ("backward_dkdv", 128, "bfloat16", True, "plain"), ("backward_dkdv", 256, "bfloat16", True, "plain"),
               ("backward_dq", 40, "float32", False, "plain")],
    "sm_120": [("forward", 96, "bfloat16", True, "plain"), ("backward_dq", 40, "float16", False, "plain"),
               ("backward_dq", 256, "bfloat16", True, "plain"),
               ("backward_dkdv", 256, "bfloat16", True, "plain"), ("forward", 256, "float32", True, "plain")],
}


def blackwell_matrix(arch: str) -> list[Specialization]:
    return [spec for kernel, head_dim, dtype, causal, variant in BLACKWELL_CASES[arch]
            for spec in default_specs(kernel, head_dim, dtype, arch, causal, variant)]


@pytest.mark.compile
@pytest.mark.parametrize("arch", ["sm_100", "sm_120"])
def test_blackwell_defaults_compile_clean_on_the_archs_mma(arch, monkeypatch):
    """Triton 3.6 and 3.9 both bundle a ptxas that targets sm_100 and sm_120 (checked: a
    bfloat16 tl.dot compiles to tcgen05.mma / mma.sync under both)."""
    import flashref.kernels.compile_gate as gate

    monkeypatch.setattr(gate, "specializations", lambda **_: blackwell_matrix(arch))
    rows = compile_specializations(arch)
    assert len(rows) == len(blackwell_matrix(arch)) and all(r.arch == arch for r in rows)
    expected = {"sm_100": "tcgen05", "sm_120": "mma.sync"}[arch]
    assert all(r.mma == (expected if r.dtype != "float32" else "fma") for r in rows), [(r.kernel, r.mma) for r in rows]
    assert all(r.uses_tma == (r.variant == "tma") for r in rows)
    assert_clean(rows)


def test_the_blackwell_verdicts():
    """sm_100: a 16-bit row off tcgen05 fails ("no tcgen05"), TMA rows must show bulk copies;
    sm_120: mma.sync is all it has, and its shared-memory limit is 99 KiB, not Hopper's 227."""
    row = CompileRow("forward", "sm_100", 128, "bfloat16", True, 128, 64, 8, 3, 225, 132096, 0, False, 1.0,
                     mma="tcgen05")
    assert problems(row) == []
    assert problems(dataclasses.replace(row, mma="mma.sync")) == ["no tcgen05"]
    assert problems(dataclasses.replace(row, mma="wgmma", uses_wgmma=True)) == ["no tcgen05"]
    assert problems(dataclasses.replace(row, dtype="float32", mma="fma")) == []
    assert problems(dataclasses.replace(row, variant="tma")) == ["no TMA"]
    consumer = dataclasses.replace(row, arch="sm_120", mma="mma.sync")
    assert problems(consumer) == ["smem 132096 > 101376 B"]
    assert problems(dataclasses.replace(consumer, shared_memory=98304)) == []
    assert specializations(head_dims=(128,), variants=("tma",), arch="sm_120") == []


def test_the_dispatcher_takes_the_rows_of_the_devices_arch(monkeypatch):
    """A faked compute capability: 10.x launches sm_100's rows, 12.x sm_120's, 9.0 the shared
    table (the pruner's pick is exactly ``configs_for(..., arch=)``, which differs from the
    shared row wherever the arch has a row of its own)."""
    import types

    from flashref.kernels import config_dispatch, tile_tables

    checked = 0
    for capability, arch in [((10, 0), "sm_100"), ((10, 3), "sm_100"), ((12, 0), "sm_120"), ((9, 0), "sm_90")]:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        monkeypatch.setattr(config_dispatch, "tuned_config", lambda *a, **k: None)
        assert tile_tables.arch_of_capability(capability) == arch
        q = types.SimpleNamespace(dtype=torch.bfloat16, device=torch.device("cuda", 0))
        for (name, bucket, float32), own in tile_tables.ARCH_TABLES.get(arch, {}).items():
            kernel = "backward_dkdv" if name in tile_tables.DKDV_LAUNCHES else name
            grads = tile_tables.DKDV_LAUNCHES.get(name, "dkdv")
            q = types.SimpleNamespace(dtype=torch.float32 if float32 else torch.bfloat16, device=q.device)
            kept = config_dispatch.config_pruner(kernel)(
                config_dispatch.all_triton_configs(kernel), {"Q": q, "HEAD_DIM": bucket, "GRADS": grads})
            assert {KernelConfig.of_triton(c) for c in kept} == set(own), (arch, name, bucket)
            assert own != tile_tables.configs_for(name, bucket, q.dtype)  # not the shared row
            checked += 1
    assert checked >= 2  # sm_100 and sm_120 each have rows of their own


@pytest.mark.compile
@pytest.mark.parametrize("arch", ["sm_90", "sm_80"])
def test_dkdv_at_head_dim_256_compiles_clean(arch):
    # Both float32 accumulators at once spilled at every tile (docs/kernels.md); one per launch
    # must fit. The CI matrix has bfloat16 causal; this is the float16 non-causal pair.
    rows = compile_specializations(arch, head_dims=(256,), dtypes=("float16",), causal=(False,),
                                   kernels=("backward_dkdv",), variants=("plain",))
    assert [r.kernel for r in rows] == ["backward_dk", "backward_dv"]
    assert_clean(rows)


@pytest.mark.slow
@pytest.mark.compile
@pytest.mark.parametrize("arch", ["sm_90", "sm_80"])
@pytest.mark.parametrize("kernel", KERNEL_NAMES + ("backward_delta",))
def test_every_specialization_compiles_clean(arch, kernel, request):
    # `-m compile` on the command line replaces the default `-m "not slow"`; this matrix takes
    # over half an hour on two cores, so it runs only when slow tests are asked for by name.
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("the full compile matrix runs only with -m slow")
    assert_clean(compile_specializations(arch, kernels=(kernel,)))


def test_specializations_cover_every_table_entry():
    specs = specializations(head_dims=(40, 128), dtypes=("float16", "float32"))
    for kernel in KERNEL_NAMES:
        for head_dim in (40, 128):
            for dtype in ("float16", "float32"):
                for causal in (False, True):
                    for config in configs_for(kernel, head_dim, getattr(torch, dtype)):
                        assert Specialization(kernel, head_dim, dtype, causal, config) in specs


def test_the_dkdv_kernel_is_one_launch_up_to_128_and_two_at_256():
    specs = specializations(head_dims=(40, 128, 160, 256), dtypes=("bfloat16",), causal=(True,),
                            kernels=("backward_dkdv",), variants=("plain",))
    assert [(s.kernel, s.head_dim) for s in specs] == [
        ("backward_dkdv", 40), ("backward_dkdv", 128), ("backward_dk", 160), ("backward_dv", 160),
        ("backward_dk", 256), ("backward_dv", 256)]
    # both passes launch what the dK/dV table says
    assert {s.config for s in specs if s.head_dim == 256} == set(configs_for("backward_dkdv", 256, torch.bfloat16))


def test_the_gate_sees_a_spill():
    """One verdict for every dtype: a float32 spill fails like a 16-bit one."""
    row = CompileRow("forward", "sm_90", 128, "bfloat16", True, 128, 128, 4, 3, 255, 98304, 272, True, 1.0)
    assert problems(row) == ["spills 272 B"]
    assert problems(dataclasses.replace(row, dtype="float32", uses_wgmma=False)) == ["spills 272 B"]
    assert problems(dataclasses.replace(row, dtype="float32", uses_wgmma=False, spills=0)) == []
    assert problems(CompileRow("forward", "sm_90", 128, "bfloat16", True, 128, 64, 8, 3, 230, 300000, 0,
                               False, 1.0)) == ["smem 300000 > 232448 B", "no wgmma"]
    assert problems(dataclasses.replace(row, arch="sm_80", spills=0, uses_wgmma=False)) == []
    assert problems({**row.as_dict(), "error": "ptxas fatal"}) == ["does not compile"]
    with pytest.raises(Exception):
        resource_usage(b"not a cubin")


def test_every_variant_switch_has_an_off_value_and_every_kernel_switch_is_known():
    """The declarative rows: a variant names known switches, and each kernel's constexprs are
    either set by the gate (tiles, head dim, causal, precision, pass) or have an 'off' value."""
    import inspect

    from flashref.kernels.compile_gate import compilable_kernel

    set_by_spec = {"HEAD_DIM", "BLOCK_D", "HEAD_DIM_V", "BLOCK_DV", "BLOCK_M", "BLOCK_N", "RIGHT_BOUND", "DOT_PRECISION",
                   "GRADS"}
    for variant in VARIANTS:
        assert all(name in CONSTEXPR_DEFAULTS for name, _ in variant.constexprs), variant
    for kernel in KERNEL_NAMES + ("backward_delta",):
        fn = compilable_kernel(kernel)
        fn = getattr(fn, "fn", fn)
        constexprs = {n for n, p in inspect.signature(fn).parameters.items() if "constexpr" in str(p.annotation)}
        assert constexprs <= set_by_spec | set(CONSTEXPR_DEFAULTS) | {n for n in constexprs if n.startswith("stride_")}


def test_variant_rows_are_enumerated_at_their_head_dims():
    specs = specializations(head_dims=(40, 128), dtypes=("bfloat16",), causal=(True,), kernels=("forward",))
    by_variant = {}
    for spec in specs:
        by_variant.setdefault(spec.variant, set()).add(spec.head_dim)
    # Each variant at its own head dims: the plain kernel and the Hopper path at every gate head
    # dim, the others at the bucket head dims only.
    expected = {v.name: {d for d in (40, 128) if d in ({p[0] for p in v.head_dim_pairs} or v.head_dims)}
                for v in VARIANTS if "bfloat16" in v.dtypes}
    assert expected["plain"] == {40, 128} and expected["tma"] == {40, 128} and expected["window"] == {128}
    assert by_variant == {name: dims for name, dims in expected.items() if dims}
    specs = specializations(head_dims=(128,), dtypes=("bfloat16",), causal=(True,), kernels=("forward",),
                            variants=("kv_lens",))
    assert {s.variant for s in specs} == {"kv_lens"}


@pytest.mark.compile
def test_the_hopper_path_uses_tma_and_wgmma_without_spills():
    """Every kernel with tensor-descriptor loads compiles for sm_90 to cp.async.bulk.tensor +
    wgmma, no spills (the default configs at head dim 96 -> 128, bfloat16, causal)."""
    rows = compile_specializations("sm_90", head_dims=(96,), dtypes=("bfloat16",), causal=(True,),
                                   kernels=KERNEL_NAMES, variants=("tma",))
    assert {r.kernel for r in rows} == set(KERNEL_NAMES) and all(r.variant == "tma" for r in rows)
    assert all(r.uses_tma and r.uses_wgmma for r in rows)
    assert_clean(rows)


def test_tma_rows_exist_only_where_the_dispatcher_takes_the_path():
    on_hopper = specializations(head_dims=(128,), variants=("tma",), arch="sm_90")
    assert on_hopper and {s.dtype for s in on_hopper} == {"float16", "bfloat16"}
    assert specializations(head_dims=(128,), variants=("tma",), arch="sm_100")
    assert specializations(head_dims=(128,), variants=("tma",), arch="sm_80") == []
    row = CompileRow("forward", "sm_90", 128, "bfloat16", True, 128, 64, 8, 3, 160, 131072, 0, True, 1.0,
                     variant="tma", uses_tma=False)
    assert problems(row) == ["no TMA"]


def test_variant_launches_take_their_tables_and_only_they_run_without_wgmma():
    """tile_tables.DROPOUT_TABLE / VARIANT_TABLE: the gate enumerates them for every variant with a
    score switch, the dispatcher's pruner picks them when the launch has the switch, and the
    one exemption from "no wgmma" (MMA_SYNC_VARIANT_LAUNCHES) holds for exactly those rows at
    exactly that tile."""
    from flashref.kernels import config_dispatch, tile_tables

    specs = specializations(head_dims=(128, 256), dtypes=("bfloat16",), causal=(True,),
                            variants=("plain", "kv_lens", "window", "dropout", "all_variants"))
    for s in specs:
        if s.kernel == "backward_delta":
            continue
        expected = tile_tables.configs_for(s.kernel, s.head_dim, torch.bfloat16,
                                       variants=s.variant not in ("plain", "kv_lens"),
                                       dropout=s.variant in ("dropout", "all_variants"))
        assert s.config in expected if s.variant == "plain" else s.config == expected[0], s
    dk_256 = {s.variant: s.config for s in specs if s.kernel == "backward_dk"}
    assert dk_256["window"] == dk_256["dropout"] == tile_tables.VARIANT_TABLE[("backward_dk", 256, False)][0]
    assert (dk_256["window"].block_m, dk_256["window"].block_n) == (16, 32) != (dk_256["kv_lens"].block_m,
                                                                                dk_256["kv_lens"].block_n)

    def pruned(name, **switches):
        tiles = [c.as_triton() for c in (KernelConfig(16, 64, 8, 2), KernelConfig(32, 64, 8, 2))]
        prune = config_dispatch.config_pruner(name)
        kept = prune(tiles, {"Q": torch.empty(1, dtype=torch.bfloat16), "HEAD_DIM": 128, **switches})
        return [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) for c in kept]

    assert pruned("backward_dkdv", DROPOUT=True) == [(16, 64)]
    assert pruned("backward_dkdv", DROPOUT=False, LEFT_BOUND=True) == pruned("backward_dkdv") == [(32, 64)]

    tile = tile_tables.VARIANT_TABLE[("backward_dk", 256, False)][0]
    row = CompileRow("backward_dk", "sm_90", 256, "bfloat16", True, 16, 32, 8, 2, 254, 60000, 0, False, 1.0,
                     variant="window", maxnreg=tile.maxnreg)
    assert problems(row) == [] and problems(dataclasses.replace(row, variant="all_variants")) == []
    assert problems(dataclasses.replace(row, variant="kv_lens")) == ["no wgmma"]  # no score variant: no excuse
    assert problems(dataclasses.replace(row, BLOCK_N=64)) == ["no wgmma"]  # another tile
    assert problems(dataclasses.replace(row, kernel="backward_dq", BLOCK_M=64, BLOCK_N=16)) == ["no wgmma"]


def test_float32_launches_tell_ptxas_the_whole_register_file():
    """Without .maxnreg ptxas parked a few values on the stack at 64-96 registers (docs/tile_tables.md);
    16-bit entries carry it only where the compile report saw that."""
    from flashref.kernels import tile_tables

    for kernel in KERNEL_NAMES:
        for head_dim in (16, 64, 128, 256):
            assert all(c.maxnreg == 255 for c in configs_for(kernel, head_dim, torch.float32))
            assert all(c.maxnreg in (None, 255) for c in configs_for(kernel, head_dim, torch.bfloat16))
    assert configs_for("forward", 128, torch.bfloat16)[0].maxnreg is None  # the default: ptxas decides
    assert tile_tables.KernelConfig.of_triton(configs_for("forward", 64, torch.float32)[0].as_triton()).maxnreg == 255


def test_mla_rows_pair_head_dims_and_take_the_wider_tile():
    """The mla variants compile the (D, Dv) pairs of MLA_HEAD_DIM_PAIRS with the dispatcher's
    tiles (max(D, Dv)'s row, or the pair's own), the delta kernel adds no row of its own."""
    from flashref.kernels.compile_gate import MLA_HEAD_DIM_PAIRS

    specs = specializations(dtypes=("bfloat16",), causal=(True,), variants=("mla",), arch="sm_80")
    assert {(s.head_dim, s.head_dim_v) for s in specs} == set(MLA_HEAD_DIM_PAIRS)
    assert {s.kernel for s in specs if s.head_dim == 192} == {"forward", "backward_dk", "backward_dv", "backward_dq"}
    for s in specs:
        assert s.config == dispatcher_configs(s.kernel, s.head_dim, torch.bfloat16, "sm_80", head_dim_v=s.head_dim_v)[0]
    wide = {(s.head_dim, s.head_dim_v, s.kernel): s.config for s in specs}
    assert wide[(192, 128, "forward")] == configs_for("forward", 256, torch.bfloat16)[0]  # max(D, Dv)
    assert specializations(head_dims=(40,), variants=("mla",)) == []
    assert not specializations(variants=("mla_tma",), arch="sm_80")


@pytest.mark.compile
@pytest.mark.parametrize("arch", ["sm_90", "sm_80"])
def test_mla_192_128_compiles_clean(arch):
    """DeepSeek's (D, Dv) = (192, 128), every launch, bfloat16 causal: no spills, and on sm_90
    the Hopper path (TMA descriptors with V and dO in Dv) on wgmma."""
    variant = "mla_tma" if arch == "sm_90" else "mla"
    rows = compile_specializations(arch, head_dims=(192,), dtypes=("bfloat16",), causal=(True,),
                                   kernels=KERNEL_NAMES, variants=(variant,))
    assert {r.kernel for r in rows} == {"forward", "backward_dk", "backward_dv", "backward_dq"}
    assert all(r.head_dim_v == 128 for r in rows)
    if arch == "sm_90":
        assert all(r.uses_tma and r.uses_wgmma for r in rows)
    assert_clean(rows)


@pytest.mark.compile
@pytest.mark.smoke
def test_fp8_forward_compiles_clean_on_hopper_with_e4m3_wgmma_for_both_products():
    # The FP8 rows (IS_FP8): the bucket head dims, causal, the default tile; every matrix product
    # must be an e4m3 x e4m3 wgmma (the verdict checks it: ``fp8_mma``, ``other_mma``).
    specs = [s for s in specializations(head_dims=(64, 128, 256), dtypes=("float8_e4m3fn",), causal=(True,),
                                        kernels=("forward",), variants=("fp8",), arch="sm_90")
             if s.config == configs_for("forward", s.head_dim, torch.bfloat16)[0]]
    rows = compile_specializations("sm_90", head_dims=(64, 128, 256), dtypes=("float8_e4m3fn",), causal=(True,),
                                   kernels=("forward",), variants=("fp8",),
                                   configs=lambda *a: configs_for(a[0], a[1], torch.bfloat16)[:1])
    assert len(rows) == len(specs) == 3
    assert all(r.fp8_mma > 0 and r.other_mma == 0 and r.mma == "wgmma" for r in rows)
    assert all(r.fp8_imprecise_acc == 32 for r in rows)  # Hopper's FP8 accumulator folded every 32
    assert_clean(rows)


@pytest.mark.compile
@pytest.mark.parametrize("arch, mma", [("sm_100", "tcgen05"), ("sm_120", "mma.sync")])
def test_fp8_forward_compiles_clean_on_blackwell_with_fp8_mma_for_both_products(arch, mma):
    # Blackwell: tcgen05 of kind f8f6f4 (sm_100), e4m3 mma.sync (sm_120), with the arch's tiles.
    rows = compile_specializations(arch, head_dims=(128, 256), dtypes=("float8_e4m3fn",), causal=(True,),
                                   kernels=("forward",), variants=("fp8",),
                                   configs=lambda *a: configs_for(a[0], a[1], torch.bfloat16, arch=arch)[:1])
    assert len(rows) == 2
    assert all(r.fp8_mma > 0 and r.other_mma == 0 and r.mma == mma for r in rows)
    assert_clean(rows)


def test_fp8_is_refused_on_sm80_and_its_rows_exist_only_on_sm90():
    assert not [s for s in specializations(arch="sm_80", kernels=("forward",)) if s.dtype == "float8_e4m3fn"]
    fp8 = [s for s in specializations(arch="sm_90", kernels=KERNEL_NAMES) if s.dtype == "float8_e4m3fn"]
    assert fp8 and {s.kernel for s in fp8} == {"forward"} and {s.variant for s in fp8} <= {v.name for v in VARIANTS}
    with pytest.raises(ValueError, match="sm_80 has no FP8 MMA"):
        from flashref.kernels.compile_gate import compile_specialization

        compile_specialization(fp8[0], "sm_80")


def test_the_gate_fails_an_fp8_row_whose_products_are_not_all_e4m3_wgmma():
    row = dict(kernel="forward", arch="sm_90", head_dim=128, dtype="float8_e4m3fn", causal=True, variant="fp8",
               BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3, registers=180, shared_memory=49152, spills=0,
               uses_wgmma=True, fp8_mma=8, other_mma=0, fp8_imprecise_acc=32)
    assert problems(row) == []
    # Triton's default: P V summed over a whole row in wgmma's ~14-bit FP8 accumulator
    assert problems({**row, "fp8_imprecise_acc": 2**30}) == ["FP8 imprecise accumulator"]
    assert problems({k: v for k, v in row.items() if k != "fp8_imprecise_acc"}) == ["FP8 imprecise accumulator"]
    assert problems({**row, "other_mma": 4}) == ["no FP8 wgmma"]  # P V upcast to bfloat16
    assert problems({**row, "fp8_mma": 0, "uses_wgmma": False}) == ["no FP8 wgmma"]
    assert problems({**row, "arch": "sm_80"}) == ["FP8 on sm_80"]
    # maxNumImpreciseAcc is a Hopper wgmma setting: tcgen05 and mma.sync rows have none
    blackwell = {k: v for k, v in row.items() if k != "fp8_imprecise_acc"}
    assert problems({**blackwell, "arch": "sm_100", "mma": "tcgen05"}) == []
    assert problems({**blackwell, "arch": "sm_120", "mma": "mma.sync", "fp8_mma": 0}) == ["no FP8 mma.sync"]
