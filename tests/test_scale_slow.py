"""Slow: kill -9 at random points (some during a save) and resume gives bitwise the uninterrupted weights;
two torchrun agents on 127.0.0.1 (c10d rendezvous, one process each) train like one process."""
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _args(corpus, run, *extra):
    return [sys.executable, "-m", "lmforge", "train", str(ROOT / "configs" / "gpt-tiny.toml"),
            f"data.paths=['{corpus}']", "model.n_layer=2", "model.n_embd=32", "model.n_head=2", "model.block_size=32",
            "train.batch_size=8", "train.max_steps=60", "train.eval_every=0", "train.save_every=3",
            "train.keep_last=2", "train.threads=1", "train.warmup_steps=5", f"run.dir='{run}'", *extra, "--quiet"]


def _temporaries(checkpoints: Path) -> set[str]:
    """Checkpoints being written (or cut off mid-write): their temporary directories, .step-N.*.tmp."""
    try:
        return {p.name for p in checkpoints.iterdir() if p.name.endswith(".tmp")}
    except FileNotFoundError:
        return set()


def _weights(run):
    return load_file(str(Path(run) / "final" / "model.safetensors"))


def test_sigkill_at_random_points_then_resume_ends_bitwise_equal(tmp_path, corpus_file):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_args(corpus_file, tmp_path / "whole"), check=True, env=env, cwd=ROOT)
    reference = _weights(tmp_path / "whole")
    rng = random.Random(0)
    kills_during_save = 0
    for trial in range(10):
        run = tmp_path / f"trial-{trial}"
        run.mkdir()  # as a restart loop does before its first start
        for attempt in range(rng.randint(1, 3)):
            process = subprocess.Popen(_args(corpus_file, run, "--resume", str(run)), env=env, cwd=ROOT,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            checkpoints = run / "checkpoints"
            earlier = _temporaries(checkpoints)  # left by a kill before: not this process's
            if trial % 2 and attempt == 0:
                # aim at a save: kill the moment a checkpoint's temporary directory appears
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and process.poll() is None and not _temporaries(checkpoints) - earlier:
                    time.sleep(0.0005)
            else:
                time.sleep(rng.uniform(1.0, 6.0))
            process.send_signal(signal.SIGKILL)
            process.wait()
            kills_during_save += bool(_temporaries(checkpoints) - earlier)  # its temporary outlived it: cut mid-save
        subprocess.run(_args(corpus_file, run, "--resume", str(run)), check=True, env=env, cwd=ROOT,
                       stdout=subprocess.DEVNULL)
        got = _weights(run)
        assert got.keys() == reference.keys()
        for name, value in reference.items():
            assert torch.equal(got[name], value), (trial, name)
    print(f"kills that landed while a checkpoint was being written: {kills_during_save}")
    assert kills_during_save >= 1


def test_two_torchrun_agents_with_c10d_rendezvous_train_like_one_process(tmp_path, corpus_file):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_args(corpus_file, tmp_path / "one", "train.max_steps=12", "train.grad_accum=2"),
                   check=True, env=env, cwd=ROOT)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    agents = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
         "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "lmforge-test",
         *_args(corpus_file, tmp_path / "two", "train.max_steps=12", "train.parallel=ddp",
                f"tokenizer.path='{tmp_path / 'one' / 'final' / 'tokenizer.json'}'")[1:]],
        env=env, cwd=ROOT) for _ in range(2)]
    assert [agent.wait(timeout=300) for agent in agents] == [0, 0]
    one, two = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, atol=1e-5, rtol=0, msg=name)
