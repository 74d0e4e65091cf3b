"""Defects found in review (issue 9): doctor's exit code, the trainer's weight decay, DDP rebuilds, the scheduler's
state, the recipe in nnU-Net's plans, the -pretrained_weights seam, DDP on CPU. Real nnU-Net trainers, built
in-process from a hand-written plans dict (no data: ``initialize`` builds network and optimizer only)."""

from __future__ import annotations

import io
import sys

import pytest
import torch
import torch.distributed as dist
from helpers import bin_path, build_trainer, nnunet_env, run
from torch import nn

from nnunet_transfer.core.schedules.groups import derive_groups
from nnunet_transfer.core.schedules.recipes import load_recipe
from nnunet_transfer.core.schedules.schedule import (
    PerGroupLRScheduler,
    Schedule,
    build_optimizer,
    resolve_schedule,
    rewrap_ddp,
)
from nnunet_transfer.errors import TrainingStateError
from nnunet_transfer.trainers.adaptive_ft import RECIPE_PLANS_KEY, nnUNetTrainerAdaptiveFT
from nnunet_transfer.trainers.variants import nnUNetTrainerAdaptiveFT_Full

BATCHNORM = "torch.nn.modules.batchnorm.BatchNorm3d"


@pytest.fixture
def build(tmp_path, monkeypatch):
    """Build (and initialize) a trainer the way ``get_trainer_from_args`` does, on CPU, in tmp_path's folders."""

    def build(cls=nnUNetTrainerAdaptiveFT, continue_training=False, initialize=True, **plans_kwargs):
        return build_trainer(tmp_path, monkeypatch, cls, continue_training, initialize, **plans_kwargs)

    return build


@pytest.fixture
def gloo(tmp_path):
    """A one-process gloo process group (world size 1) for the duration of the test."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg_store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


# --- 1. doctor --------------------------------------------------------------------------------------------------
def test_doctor_fails_on_an_ext_trainer_entry_that_is_not_a_folder(tmp_path):
    missing = tmp_path / "no_such_folder"
    proc = run([bin_path("nnunet-transfer"), "doctor"], nnunet_env(tmp_path, nnUNet_extTrainer=str(missing)),
               check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    fails = [line for line in proc.stdout.splitlines() if line.startswith("[FAIL]")]
    assert fails == [f"[FAIL] nnUNet_extTrainer entries: not folders (nnU-Net skips them): ['{missing}']: remove "
                     "them from nnUNet_extTrainer or create the folders"], proc.stdout
    assert "registration works" not in proc.stdout
    assert proc.stdout.rstrip().endswith("registration problem: see the FAIL lines above")
    # every other check passed, the -pretrained_weights seam among them
    assert "[ok] -pretrained_weights seam: nnunetv2.run.run_training.maybe_load_checkpoint" in proc.stdout


# --- 2. weight decay ----------------------------------------------------------------------------------------------
class _WeightDecayTrainer(nnUNetTrainerAdaptiveFT):
    """nnU-Net's way to change a hyperparameter: set it after super().__init__."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.weight_decay = 1e-3


def test_trainer_weight_decay_is_the_default_of_every_group(build, tmp_path, monkeypatch):
    recipe = tmp_path / "wd.yaml"
    recipe.write_text("name: wd\ngroup_weight_decay: {heads: 0.0}\n")
    monkeypatch.setenv("NNUNET_TRANSFER_RECIPE", str(recipe))
    trainer = build(_WeightDecayTrainer)
    decay = {pg["name"]: pg["weight_decay"] for pg in trainer.optimizer.param_groups}
    assert decay.pop("heads") == 0.0  # the recipe's per-group value still wins
    assert decay and set(decay.values()) == {1e-3}, decay
    assert trainer.schedule.weight_decay["decoder.stage0"] == 1e-3


def test_recipe_weight_decay_still_reaches_the_optimizer(build, tmp_path, monkeypatch):
    recipe = tmp_path / "wd.yaml"
    recipe.write_text("name: wd\nweight_decay: 0.002\n")
    monkeypatch.setenv("NNUNET_TRANSFER_RECIPE", str(recipe))
    trainer = build()
    assert trainer.weight_decay == 0.002
    assert {pg["weight_decay"] for pg in trainer.optimizer.param_groups} == {0.002}


# --- 3. rewrap_ddp -----------------------------------------------------------------------------------------------
def _settings(ddp: nn.parallel.DistributedDataParallel) -> dict:
    return {"module": ddp.module, "device_ids": ddp.device_ids, "output_device": ddp.output_device, "dim": ddp.dim,
            "process_group": ddp.process_group, "find_unused_parameters": ddp.find_unused_parameters,
            "gradient_as_bucket_view": ddp.gradient_as_bucket_view, "static_graph": ddp.static_graph,
            "buffers": getattr(ddp, "forward_sync_buffers", getattr(ddp, "broadcast_buffers", None)),
            "bucket_bytes_cap": ddp.bucket_bytes_cap, "bucket_default": ddp.bucket_bytes_cap_default}


@pytest.mark.filterwarnings("ignore:You passed find_unused_parameters=true")
def test_rewrap_ddp_keeps_the_users_settings(gloo, unet_factory):
    net = unet_factory()
    group = dist.new_group([0], backend="gloo")
    with pytest.warns(FutureWarning, match="broadcast_buffers"):  # deprecated in torch 2.14, still honoured
        ddp = nn.parallel.DistributedDataParallel(
            net, dim=1, process_group=group, broadcast_buffers=False, bucket_cap_mb=1, find_unused_parameters=True,
            gradient_as_bucket_view=True, static_graph=True)

    def hook(state, bucket):  # an allreduce hook that records it ran
        state.append(1)
        return dist.all_reduce(bucket.buffer(), group=group, async_op=True).get_future().then(lambda f: f.value()[0])

    calls: list[int] = []
    ddp.register_comm_hook(calls, hook)
    for p in net.encoder.parameters():
        p.requires_grad_(False)
    new = rewrap_ddp(ddp)
    assert new is not ddp
    before, after = _settings(ddp), _settings(new)
    assert after == before
    assert after["find_unused_parameters"] and after["gradient_as_bucket_view"] and after["static_graph"]
    assert after["dim"] == 1 and after["process_group"] is group and after["buffers"] is False
    assert after["bucket_bytes_cap"] == 2**20 and not after["bucket_default"]
    assert [h for h, _ in new._comm_hooks] == [hook]
    out = new(torch.randn(2, 1, 8, 16, 16))
    sum(o.square().mean() for o in out).backward()
    assert calls  # the hook carried over runs on the new wrapper
    assert all(p.grad is None for p in net.encoder.parameters())


def test_rewrap_ddp_defaults_stay_defaults(gloo, unet_factory):
    ddp = nn.parallel.DistributedDataParallel(unet_factory())
    new = rewrap_ddp(ddp)
    assert _settings(new) == _settings(ddp)
    assert new.bucket_bytes_cap_default and new.process_group is ddp.process_group


# --- 4. PerGroupLRScheduler -----------------------------------------------------------------------------------
def _scheduler(unet_factory):
    net = unet_factory()
    groups = derive_groups(net)
    recipe = load_recipe("default")
    s = resolve_schedule(recipe, [g.name for g in groups], 20, 0.01)
    opt = build_optimizer(groups, s)
    return opt, s, PerGroupLRScheduler(opt, s)


def test_scheduler_get_lr_is_the_schedules_rate_per_group(unet_factory):
    opt, s, sched = _scheduler(unet_factory)
    for epoch in (0, 3, 7, 19):
        sched.step(epoch)
        expected = [s.lr(pg["name"], epoch) for pg in opt.param_groups]
        assert sched.get_lr() == expected
        assert sched.get_last_lr() == expected == [pg["lr"] for pg in opt.param_groups]
        assert sched.last_epoch == epoch
    assert len(set(sched.get_lr())) > 1  # the groups do differ (frozen encoder, trained decoder)


def test_scheduler_state_dict_is_plain_data_and_restores_the_counters(unet_factory):
    _, _, sched = _scheduler(unet_factory)
    sched.step()
    sched.step()
    sched.step(5)
    state = sched.state_dict()
    assert not any(isinstance(v, Schedule) for v in state.values()) and "optimizer" not in state
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    assert loaded == state

    _, _, fresh = _scheduler(unet_factory)
    fresh.load_state_dict(loaded)
    assert (fresh.ctr, fresh.last_epoch, fresh.get_last_lr()) == (sched.ctr, sched.last_epoch, sched.get_last_lr())
    fresh.step()  # counts on from the restored counter, as the original does
    sched.step()
    assert fresh.last_epoch == sched.last_epoch == 3 and fresh.get_last_lr() == sched.get_last_lr()


# --- 5. the recipe in nnU-Net's plans ---------------------------------------------------------------------------
def test_recipe_reaches_plans_json_and_checkpoints_when_the_plans_are_two_dicts(build, tmp_path, monkeypatch):
    first = build(nnUNetTrainerAdaptiveFT_Full)
    assert first.plans_manager.plans[RECIPE_PLANS_KEY]["name"] == "full_ft"
    ckpt = tmp_path / "checkpoint_latest.pth"
    first.save_checkpoint(str(ckpt))
    assert torch.load(ckpt, weights_only=False)["init_args"]["plans"][RECIPE_PLANS_KEY]["name"] == "full_ft"

    # --c with another recipe named now: the checkpoint's recipe is adopted. nnU-Net's load_checkpoint replaces
    # my_init_kwargs by the checkpoint's init_args, so plans_manager.plans (saved as plans.json by on_train_start)
    # is no longer the same dict
    monkeypatch.setenv("NNUNET_TRANSFER_RECIPE", "decoder_only")
    resumed = build(nnUNetTrainerAdaptiveFT_Full, continue_training=True, initialize=False)
    assert resumed.ft_recipe.name == "decoder_only"
    resumed.load_checkpoint(str(ckpt))
    assert resumed.ft_recipe.name == "full_ft"
    assert resumed.my_init_kwargs["plans"] is not resumed.plans_manager.plans
    assert resumed.my_init_kwargs["plans"][RECIPE_PLANS_KEY]["name"] == "full_ft"
    assert resumed.plans_manager.plans[RECIPE_PLANS_KEY]["name"] == "full_ft"


# --- 6. the -pretrained_weights seam ----------------------------------------------------------------------------
def test_pretrained_weights_through_nnunets_own_maybe_load_checkpoint(build, tmp_path):
    from nnunetv2.run.run_training import maybe_load_checkpoint

    source = build()
    ckpt = tmp_path / "pretrained.pth"
    source.save_checkpoint(str(ckpt))
    trainer = build(initialize=False)
    maybe_load_checkpoint(trainer, False, False, str(ckpt))  # nnU-Net's code path of -pretrained_weights
    assert trainer.pretrained_report is not None and trainer.pretrained_report.checkpoint == str(ckpt)
    assert "load_pretrained_weights" not in vars(nnUNetTrainerAdaptiveFT)  # nnU-Net's dev branch has that method


def test_seam_checker_names_a_caller_that_does_not_call_load_pretrained_weights():
    from nnunet_transfer.nnunet.pretrained_hook import check_pretrained_seam

    def maybe_load_checkpoint(nnunet_trainer, continue_training, validation_only, pretrained_weights_file=None):
        if pretrained_weights_file is not None:  # a future nnU-Net loading the weights itself
            nnunet_trainer.initialize()
            nnunet_trainer.network.load_state_dict(torch.load(pretrained_weights_file)["network_weights"])

    assert check_pretrained_seam() == []  # the installed nnunetv2
    problems = check_pretrained_seam(maybe_load_checkpoint)
    assert len(problems) == 1
    assert problems[0].endswith("maybe_load_checkpoint does not call load_pretrained_weights (nnU-Net loads "
                                "-pretrained_weights some other way)")
    assert problems[0].startswith(f"{__name__}.")


def test_pretrained_weights_flag_that_never_reached_the_trainer_names_the_seam(build, monkeypatch):
    trainer = build()
    monkeypatch.setattr(sys, "argv", ["nnUNetv2_train", "990", "3d_fullres", "0", "-tr", "nnUNetTrainerAdaptiveFT",
                                      "-pretrained_weights", "/some/checkpoint.pth"])
    with pytest.raises(TrainingStateError, match=r"-pretrained_weights was given but never reached .*"
                                                 r"nnunetv2\.run\.run_training\.maybe_load_checkpoint"):
        trainer.on_train_start()


# --- 7. DDP on CPU ------------------------------------------------------------------------------------------------
def test_cpu_ddp_wraps_the_network_on_cpu(build, gloo, recwarn):
    trainer = build()
    assert isinstance(trainer.network, nn.parallel.DistributedDataParallel)
    assert trainer.device == torch.device("cpu") and trainer.grad_scaler is None
    assert next(trainer.network.parameters()).device.type == "cpu"
    assert trainer.batch_size == 2  # the whole batch: world size 1
    assert not [w for w in recwarn if "BatchNorm" in str(w.message)]  # InstanceNorm: nothing to synchronise


def test_cpu_ddp_warns_that_batchnorm_is_not_synchronised(build, gloo):
    with pytest.warns(UserWarning, match=r"DDP on CPU: the network has \d+ BatchNorm layers .*SyncBatchNorm does not "
                                         r"run on CPU"):
        trainer = build(norm_op=BATCHNORM)
    assert isinstance(trainer.network, nn.parallel.DistributedDataParallel)
    assert any(isinstance(m, nn.BatchNorm3d) for m in trainer.network.modules())
    log = open(trainer.log_file).read()  # noqa: SIM115
    assert "WARNING: DDP on CPU" in log


def test_syncbatchnorm_really_refuses_cpu_tensors(gloo):
    """Why the CPU path cannot do what nnU-Net does on GPUs (if torch lifts this, convert like nnU-Net)."""
    bn = nn.SyncBatchNorm(2).train()
    with pytest.raises(ValueError, match="SyncBatchNorm expected input tensor to be on GPU"):
        bn(torch.randn(2, 2, 4, 4, 4))


def test_without_a_process_group_the_trainer_is_nnunets(build):
    trainer = build()
    assert not trainer.is_ddp and not isinstance(trainer.network, nn.parallel.DistributedDataParallel)


def test_doctor_on_an_install_outside_site_packages(monkeypatch, capsys):
    """``pip install --target DIR`` (an offline node's read-only environment): Python never processes the start-up
    hook there. Without ``nnUNet_extTrainer`` doctor fails and prints the line to add; with it set by hand, it passes."""
    import site

    from nnunet_transfer._autoregister import TRAINER_FOLDER
    from nnunet_transfer.cli.doctor import run_doctor

    monkeypatch.setattr(site, "getsitepackages", lambda: ["/nonexistent/site-packages"])
    monkeypatch.setattr(site, "getusersitepackages", lambda: "/nonexistent/user-site")
    monkeypatch.delenv("nnUNet_extTrainer", raising=False)
    assert run_doctor() == 1
    hook = next(line for line in capsys.readouterr().out.splitlines() if "start-up hook" in line)
    assert hook.startswith("[FAIL] start-up hook:") and f"export nnUNet_extTrainer={TRAINER_FOLDER}" in hook

    monkeypatch.setenv("nnUNet_extTrainer", TRAINER_FOLDER)
    run_doctor()
    lines = capsys.readouterr().out.splitlines()
    hook = next(line for line in lines if "start-up hook" in line)
    assert hook.startswith("[ok] start-up hook:") and "pip --target" in hook
    assert any(line.startswith("[ok] nnUNet_extTrainer in this process") for line in lines)
