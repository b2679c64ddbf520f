"""Data parallel on CPU (gloo): 2 ranks x accumulation A end where one process with accumulation 2A ends
(DDP and FSDP2), and an FSDP checkpoint resumes in one process and in two."""
import os
import shutil
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from lmforge import LM
from lmforge.bundle import Bundle
from lmforge.modeldir import save_model_dir
from lmforge.tasks import make_task
from lmforge.train.trainer import RunDir, train

TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=32)
SETTINGS = dict(batch_size=4, lr=3e-3, min_lr=3e-4, warmup_steps=3, eval_every=6, eval_steps=2, log_every=5, threads=1,
                grad_norms_every=3, tensorboard=False, patience=50)  # patience: best weights kept and restored


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(model_dir, work, run, out, resume=None, **options):
    """Train the model in `model_dir` on the token file prepared in `work`; rank 0 saves the final weights."""
    torch.set_num_threads(1)
    lm = LM.from_pretrained(model_dir)
    task, _ = make_task(lm.bundle, lm.config.train, lm.config.data, work)
    cfg = lm.config.train.model_copy(update={**SETTINGS, **options})
    export = RunDir(run, lambda model, path: save_model_dir(path, Bundle(model, lm.tokenizer, lm.config.model)))
    result = train(lm.model, task, cfg, export, resume=resume or False, progress=False)
    if result.rank == 0:
        save_file({k: v.detach().clone().contiguous() for k, v in result.model.state_dict().items()}, str(out))


def _rank(rank, world, port, args, options):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    _run(*args, **options)


def _spawn(world, *args, **options):
    # A rank killed by a signal (gloo on a loaded 2-core machine has, rarely, aborted) is retried once on a fresh
    # port; a rank that raised (a wrong result, an error of ours) is not.
    for attempt in (1, 2):
        try:
            mp.start_processes(_rank, args=(world, _port(), args, options), nprocs=world, start_method="spawn")
            return
        except mp.ProcessExitedException:
            if attempt == 2:
                raise


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tests.conftest import small_corpus

    root = tmp_path_factory.mktemp("dist")
    corpus = root / "corpus.txt"
    corpus.write_text(small_corpus())
    lm = LM.new("gpt", corpus=corpus, **TINY)
    lm.config = lm.config.model_copy(update={"data": lm.config.data.model_copy(update={"paths": [str(corpus)]})})
    lm.save(root / "init")
    make_task(lm.bundle, lm.config.train, lm.config.data, root / "work")  # the token file, built once (ranks only read it)
    reference = root / "reference.safetensors"
    _run(root / "init", root / "work", root / "ref-run", reference, max_steps=12, grad_accum=4)
    return root, load_file(str(reference))


def _assert_close(path, reference):
    got = load_file(str(path))
    assert got.keys() == reference.keys()
    for name, value in reference.items():
        torch.testing.assert_close(got[name], value, atol=1e-5, rtol=0, msg=name)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_ranks_match_one_process_with_twice_the_accumulation(setup, parallel):
    root, reference = setup
    out = root / f"{parallel}.safetensors"
    _spawn(2, root / "init", root / "work", root / f"{parallel}-run", out, parallel=parallel, max_steps=12,
           grad_accum=2, save_every=6, keep_last=5)
    _assert_close(out, reference)
    assert (root / f"{parallel}-run" / "final" / "model.safetensors").is_file()


def test_an_fsdp_checkpoint_resumes_in_one_process_and_in_two(setup):
    root, reference = setup
    run = root / "fsdp-run"
    if not (run / "checkpoints" / "step-6").is_dir():
        _spawn(2, root / "init", root / "work", run, root / "fsdp.safetensors", parallel="fsdp", max_steps=12,
               grad_accum=2, save_every=6, keep_last=5)
    for world, parallel in ((1, "none"), (2, "fsdp"), (1, "fsdp")):
        again = root / f"resume-{world}-{parallel}"
        shutil.copytree(run / "checkpoints" / "step-6", again / "checkpoints" / "step-6")
        shutil.copytree(run / "best", again / "best")  # as of step 6 or later: a resume reads the best so far
        out = root / f"resume-{world}-{parallel}.safetensors"
        options = dict(parallel=parallel, max_steps=12, grad_accum=4 // world, save_every=6, resume=True)
        if world == 1:
            _run(again / "checkpoints" / "step-6", root / "work", again, out, **options)
        else:
            _spawn(2, again / "checkpoints" / "step-6", root / "work", again, out, **options)
        _assert_close(out, reference)
