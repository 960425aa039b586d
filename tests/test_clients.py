"""gradwise's optimizers inside the tools users train with, against torch.optim's in the same tool.

Each test runs a client (Lightning's Trainer, Hugging Face's Trainer, ``torch.compile``, AMP,
gradient clipping, SWA, torch's schedulers) for a few steps on a tiny model built here, once with
torch.optim's class and once with gradwise's, from the same seed, and compares the weights.
DDP with ``gradient_as_bucket_view=True`` and FSDP2 are in test_distributed.py.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import gradwise.optim as go

#: torch's update and gradwise's agree to float rounding at each step; through a few steps of a
#: model the difference stays at that level
CLOSE = dict(rtol=1e-5, atol=1e-6)


def tiny_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def tiny_data(n: int = 64, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def assert_same_weights(a: nn.Module, b: nn.Module, **tol) -> None:
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa.detach(), pb.detach(), msg=name, **(tol or CLOSE))


# ---------------------------------------------------------------------------------- Lightning
def _lightning_fit(optimizer_cls, tmp_path, epochs: int, ckpt: str | None = None):
    lightning = pytest.importorskip("lightning")

    class Module(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = tiny_mlp()

        def training_step(self, batch, _):
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            opt = optimizer_cls(self.parameters(), lr=0.02, weight_decay=0.01)
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
            return {"optimizer": opt, "lr_scheduler": sched}

    x, y = tiny_data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    module = Module()
    trainer = lightning.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=0.5,
        default_root_dir=tmp_path,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(module, loader, ckpt_path=ckpt)
    return module, trainer


def test_lightning_trainer_with_a_torch_scheduler_and_its_checkpoint(tmp_path):
    """``configure_optimizers`` returning a gradwise AdamW and torch's StepLR, with Lightning's
    gradient clipping: the same weights as torch's AdamW. Lightning's checkpoint (which holds
    the optimizer's state_dict) resumes to the weights of an uninterrupted run."""
    ref, _ = _lightning_fit(torch.optim.AdamW, tmp_path / "torch", epochs=3)
    ours, trainer = _lightning_fit(go.AdamW, tmp_path / "gw", epochs=3)
    assert_same_weights(ref, ours)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.02 * 0.5**3)

    ckpt = tmp_path / "after-2.ckpt"
    _, two = _lightning_fit(go.AdamW, tmp_path / "two", epochs=2)
    two.save_checkpoint(ckpt)
    resumed, _ = _lightning_fit(go.AdamW, tmp_path / "resumed", epochs=3, ckpt=str(ckpt))
    assert_same_weights(ours, resumed, rtol=0, atol=0)


# --------------------------------------------------------------------------- Hugging Face
def _tiny_gpt2():
    """A randomly initialized 2-layer GPT-2 (no download), the same at every call."""
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        vocab_size=64,
        n_positions=16,
        n_embd=32,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config)


def _hf_train(optimizer_cls, tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    model = _tiny_gpt2()
    ids = torch.randint(0, 64, (32, 16), generator=torch.Generator().manual_seed(2))
    dataset = [{"input_ids": row, "labels": row} for row in ids]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=6,
        per_device_train_batch_size=8,
        max_grad_norm=1.0,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    opt = optimizer_cls(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = transformers.get_linear_schedule_with_warmup(opt, 2, 6)
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=dataset, optimizers=(opt, sched)
    )
    trainer.train()
    return model


def test_hugging_face_trainer_with_gradwise_adamw(tmp_path):
    """``transformers.Trainer(optimizers=(gradwise AdamW, warmup-linear schedule))`` on a
    randomly initialized 2-layer GPT-2, with the Trainer's gradient clipping."""
    ref = _hf_train(torch.optim.AdamW, tmp_path / "torch")
    ours = _hf_train(go.AdamW, tmp_path / "gw")
    assert_same_weights(ref, ours, rtol=1e-4, atol=1e-5)
    assert not torch.equal(ours.lm_head.weight, _tiny_gpt2().lm_head.weight)  # it trained


# ----------------------------------------------------------------------- plain-loop clients
def _loop(
    optimizer_cls,
    *,
    steps: int = 6,
    model: nn.Module | None = None,
    forward=None,
    before_step=None,
    after_step=None,
    set_to_none: bool = True,
    **kwargs,
):
    """A plain loop ``zero_grad(); backward(); [before_step]; step(); [after_step]``."""
    model = tiny_mlp() if model is None else model
    forward = forward or model
    opt = optimizer_cls(model.parameters(), **kwargs)
    x, y = tiny_data()
    for i in range(steps):
        opt.zero_grad(set_to_none=set_to_none)
        loss = F.cross_entropy(forward(x), y)
        loss.backward()
        if before_step is not None:
            before_step(model, opt, i)
        opt.step()
        if after_step is not None:
            after_step(model, opt, i, loss)
    return model, opt


@pytest.mark.parametrize("name", ["Adam", "SGD"])
def test_a_torch_compiled_model(name):
    """``torch.compile(model)`` (Inductor): the gradients backward hands over come from a
    compiled graph; gradwise's step takes them as torch's does."""
    kw = dict(lr=0.01) if name == "Adam" else dict(lr=0.05, momentum=0.9)
    results = []
    for cls in (getattr(torch.optim, name), getattr(go, name)):
        model = tiny_mlp()
        results.append(_loop(cls, model=model, forward=torch.compile(model), **kw)[0])
    assert_same_weights(*results)


@pytest.mark.parametrize("set_to_none", [True, False])
def test_autocast_bfloat16_on_cpu(set_to_none):
    def forward(model):
        def run(x):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model(x).float()

        return run

    results = []
    for cls in (torch.optim.AdamW, go.AdamW):
        model = tiny_mlp()
        results.append(
            _loop(cls, model=model, forward=forward(model), set_to_none=set_to_none, lr=1e-2)[0]
        )
    assert_same_weights(*results)


def _scaled_loop(optimizer_cls, set_to_none: bool):
    """GradScaler on the CPU: the loss scaled, gradients unscaled before clipping, a step with
    an infinite gradient skipped and the scale halved, as in torch's AMP recipe."""
    model = tiny_mlp()
    opt = optimizer_cls(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=2)
    x, y = tiny_data()
    scales = []
    for i in range(6):
        opt.zero_grad(set_to_none=set_to_none)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x).float(), y)
        scaler.scale(loss).backward()
        if i == 2:
            next(model.parameters()).grad[0, 0] = float("inf")
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        scales.append(scaler.get_scale())
    return model, opt, scales


@pytest.mark.parametrize("set_to_none", [True, False])
def test_grad_scaler_skips_an_infinite_step_as_for_torch(set_to_none):
    ref, ref_opt, ref_scales = _scaled_loop(torch.optim.Adam, set_to_none)
    ours, opt, scales = _scaled_loop(go.Adam, set_to_none)
    assert scales == ref_scales
    assert scales[2] == scales[1] / 2  # the infinite step was skipped and the scale halved
    assert_same_weights(ref, ours)
    for p_ref, p in zip(ref.parameters(), ours.parameters(), strict=True):
        assert float(opt.state[p]["step"]) == float(ref_opt.state[p_ref]["step"]) == 5


@pytest.mark.parametrize("set_to_none", [True, False])
@pytest.mark.parametrize("foreach", [True, False])
def test_clip_grad_norm_and_clip_grad_value(set_to_none, foreach):
    def clip(model, _opt, i):
        if i % 2:
            nn.utils.clip_grad_norm_(model.parameters(), 0.1, foreach=foreach)
        else:
            nn.utils.clip_grad_value_(model.parameters(), 0.01, foreach=foreach)

    ref = _loop(torch.optim.SGD, before_step=clip, lr=0.5, momentum=0.9, set_to_none=set_to_none)
    ours = _loop(go.SGD, before_step=clip, lr=0.5, momentum=0.9, set_to_none=set_to_none)
    assert_same_weights(ref[0], ours[0])


def test_stochastic_weight_averaging_with_swalr():
    """``AveragedModel`` + ``SWALR`` (which anneals each group's lr), and
    ``update_bn``-free averaging: the averaged weights equal torch's."""
    from torch.optim.swa_utils import SWALR, AveragedModel

    results = []
    for cls in (torch.optim.SGD, go.SGD):
        model = tiny_mlp()
        averaged = AveragedModel(model)
        box = {}

        def after(model, opt, i, _loss, averaged=averaged, box=box):
            if "swa" not in box:
                box["swa"] = SWALR(opt, swa_lr=0.05, anneal_epochs=3)
            averaged.update_parameters(model)
            box["swa"].step()

        _loop(cls, model=model, after_step=after, steps=8, lr=0.2, momentum=0.9)
        results.append(averaged)
    assert_same_weights(*results)


def test_reduce_lr_on_plateau_from_torch():
    results = []
    for cls in (torch.optim.Adam, go.Adam):
        box = {}

        def after(_model, opt, _i, loss, box=box):
            if "s" not in box:
                box["s"] = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.3, patience=0)
            box["s"].step(1.0)  # a metric that never improves: the lr drops every step
            box.setdefault("lrs", []).append(opt.param_groups[0]["lr"])

        model, _ = _loop(cls, after_step=after, steps=5, lr=0.05)
        results.append((model, box["lrs"]))
    assert results[0][1] == results[1][1]
    assert results[1][1][-1] == pytest.approx(0.05 * 0.3**4)
    assert_same_weights(results[0][0], results[1][0])


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
        ("Adam", dict(lr=0.01)),
        ("AdamW", dict(lr=0.01, weight_decay=0.1)),
        ("RMSprop", dict(lr=0.01, momentum=0.9)),
    ],
)
def test_one_cycle_lr_cycling_momentum_and_betas(name, kwargs):
    """OneCycleLR writes each group's lr and its momentum (SGD, RMSprop) or ``betas[0]``
    (Adam, AdamW) before every step: gradwise must read the new values at every step, including
    on its cached kernel plans."""
    results = []
    for cls in (getattr(torch.optim, name), getattr(go, name)):
        box = {}

        def after(_model, opt, _i, _loss, box=box):
            box["s"].step()

        def before(_model, opt, i, box=box):
            if i == 0:
                box["s"] = torch.optim.lr_scheduler.OneCycleLR(
                    opt, max_lr=kwargs["lr"], total_steps=12, cycle_momentum=True
                )

        model, opt = _loop(cls, before_step=before, after_step=after, steps=12, **kwargs)
        results.append((model, copy.deepcopy(opt.param_groups[0])))
    assert_same_weights(results[0][0], results[1][0])
    key = "betas" if "Adam" in name else "momentum"
    assert results[0][1][key] == results[1][1][key]


def test_the_fused_kernel_reads_the_momentum_a_scheduler_cycles():
    """The same on gradwise's fused kernel (``fused=True``): the momentum a scheduler writes
    reaches the kernel as a runtime scalar at every step."""
    from gradwise.optim import kernels

    torch.manual_seed(0)
    big = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 6))
    results = []
    for cls, flags in ((torch.optim.SGD, dict(foreach=False)), (go.SGD, dict(fused=True))):
        model = copy.deepcopy(big)
        g = torch.Generator().manual_seed(3)
        x, y = torch.randn(32, 64, generator=g), torch.randint(0, 6, (32,), generator=g)
        # the kernel test_optim.py builds too: one build per machine
        opt = cls(model.parameters(), lr=0.05, momentum=0.8, nesterov=True, **flags)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=0.1, total_steps=6, base_momentum=0.5, max_momentum=0.95
        )
        for _ in range(6):
            opt.zero_grad(set_to_none=False)
            F.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
        results.append(model)
    assert any(memo[0] is go.SGD.rule for memo in kernels._loaded)
    assert_same_weights(*results, rtol=2e-6, atol=1e-6)


def test_torch_compile_of_the_step_matches_eager():
    """``torch.compile(opt.step)``: Dynamo traces gradwise's step (breaking the graph where the
    step counter is read) and the result equals the eager step's."""
    results = []
    for compiled in (False, True):
        model = tiny_mlp()
        opt = go.Adam(model.parameters(), lr=0.01)
        step = torch.compile(opt.step) if compiled else opt.step
        x, y = tiny_data()
        for _ in range(4):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            step()
        results.append(model)
    assert_same_weights(*results)
