"""The `jaxrnn` command line, run as a user runs it: training and the bad inputs through `jaxrnn.cli.main`
in this process (a fresh process each would add only JAX's import), sampling some runs as
`python -m jaxrnn.cli ...` in fresh processes, side by side, so each restores what another process saved.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from jaxrnn import checkpoint

TINY_FLAGS = ["--epochs", "1", "--no-curves", "--hidden", "16", "--num-train", "512", "--num-val", "256",
              "--batch-size", "128", "--num-steps", "8"]
RESULT = re.compile(r"^perplexity (\d+\.\d), '(time traveller.{50})'$")
# run name -> model flags: the chapters' two models, and each gated cell and each implementation at least
# once, the Flax LSTM and the GRU with -m slow (every cell in both implementations is tested in-process:
# test_gated_cells.py, test_sample.py)
MODEL_FLAGS = {
    "scratch": ["--model", "scratch"],
    "concise": ["--model", "concise"],
    "lstm-flax": ["--cell", "lstm", "--impl", "flax"],
    "gru-scratch": ["--cell", "gru", "--gru-reset", "before"],
    # a scratch LSTM with depth, embedding, tied head, dropout and the optax options through the CLI
    # (TINY_FLAGS' hidden is 16); the Flax twins of these are tested in-process in test_deep.py
    "deep-scratch": ["--cell", "lstm", "--layers", "2", "--embed", "16", "--tie", "--dropout", "0.2", "--optimizer",
                     "adamw", "--lr", "0.01", "--weight-decay", "0.01", "--schedule", "cosine", "--warmup", "2"],
}
SLOW_MODELS = {"lstm-flax", "gru-scratch"}  # trained (on first use) only with -m slow
MODELS = [pytest.param(m, marks=pytest.mark.slow) if m in SLOW_MODELS else m for m in MODEL_FLAGS]


def run_all(run_python, cwd: Path, commands: dict[str, list[str]]) -> dict[str, subprocess.CompletedProcess]:
    """Run `python -m jaxrnn.cli ARGS` for every entry at once; results by name."""
    with ThreadPoolExecutor(len(commands)) as pool:
        futures = {k: pool.submit(run_python, ["-m", "jaxrnn.cli", *args], cwd) for k, args in commands.items()}
        return {k: f.result() for k, f in futures.items()}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


RAW_PROMPT = "The Time Machine, by"  # the raw text's first line, cut at a space to at most 20 characters


class OnFirstUse(dict):
    """A dict whose missing entries `make(name)` makes when first asked for: what the selected tests use."""

    def __init__(self, make: Callable[[str], subprocess.CompletedProcess], done: dict | None = None) -> None:
        super().__init__(done or {})
        self.make = make

    def __missing__(self, name: str) -> subprocess.CompletedProcess:
        self[name] = self.make(name)
        return self[name]


@pytest.fixture(scope="module")
def trained(call, work: Path) -> OnFirstUse:
    """Phase 1: train each model (fused), and a tanh model on a raw text (case, punctuation, newlines kept)."""
    raw = (Path(os.environ["JAXRNN_DATA_DIR"]) / "timemachine.txt").read_text()[:12000]
    (work / "raw.txt").write_text(raw)
    flags = {**MODEL_FLAGS, "raw": ["--data", "raw.txt", "--preprocessing", "none"]}
    return OnFirstUse(lambda m: call(["train", *flags[m], *TINY_FLAGS, "--out", str(work / m)], work))


FRESH = {"sample-scratch": "scratch", "sample-deep-scratch": "deep-scratch", "sample-many": "concise"}


@pytest.fixture(scope="module")
def used(run_python, call, work: Path, trained) -> OnFirstUse:
    """Phase 2: sample the trained runs: the chapter's model, the deep one and a drawn sample in new processes
    side by side (each restores what another process saved), the rest in this one when first asked for
    (a process start and JAX's import fewer each)."""
    commands = {f"sample-{m}": ["sample", "--run", str(work / m), "--prefix", "time traveller", "--num-preds", "50"]
                for m in MODEL_FLAGS}
    commands["sample-raw"] = ["sample", "--run", str(work / "raw")]  # the run's own default prompt
    commands["sample-many"] = ["sample", "--run", str(work / "concise"), "--num-samples", "3", "--temperature", "1",
                               "--top-k", "5", "--top-p", "0.9", "--num-preds", "40", "--seed", "7"]
    for run in FRESH.values():
        assert trained[run].returncode == 0, trained[run].stderr
    fresh = run_all(run_python, work, {k: commands[k] for k in FRESH})
    return OnFirstUse(lambda k: call(commands[k], work), fresh)


@pytest.fixture(scope="module")
def bad(call, work: Path, trained) -> dict[str, subprocess.CompletedProcess]:
    """The bad inputs (they fail before any training)."""
    assert trained["scratch"].returncode == 0  # the run some of them name
    (work / "empty").mkdir(exist_ok=True)
    run = str(work / "scratch")
    return {name: call([a.replace("{run}", run) for a in args], work) for name, (args, *_) in BAD_INPUTS.items()}


def result_line(proc: subprocess.CompletedProcess) -> re.Match:
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.endswith("\n") and proc.stdout.count("\n") == 1, proc.stdout  # nothing else on stdout
    m = RESULT.match(proc.stdout.rstrip("\n"))
    assert m, proc.stdout
    return m


@pytest.mark.parametrize("model", MODELS)
def test_train_prints_one_result_line(trained, model: str) -> None:
    result_line(trained[model])
    assert "Traceback" not in trained[model].stderr


@pytest.mark.parametrize("model", MODELS)
def test_train_writes_a_run_directory(trained, work: Path, model: str) -> None:
    result = result_line(trained[model])
    run = work / model
    cfg = json.loads((run / "config.json").read_text())
    name = model
    assert (cfg["cell"], cfg["impl"]) == {"scratch": ("rnn", "scratch"), "concise": ("rnn", "flax"),
                                          "deep-scratch": ("lstm", "scratch"), "gru-scratch": ("gru-d2l", "scratch")
                                          }.get(name, tuple(name.split("-")))
    deep = (2, 16, True, 0.2, "adamw", 0.01, "cosine", 2) if name == "deep-scratch" else \
        (1, 0, False, 0.0, "sgd", 0.0, "constant", 0)
    assert tuple(cfg[k] for k in ("layers", "embed", "tie", "dropout", "optimizer", "weight_decay", "schedule",
                                  "warmup")) == deep
    assert "gru_reset" not in cfg and "model" not in cfg  # aliases, read into the cell
    assert (cfg["epochs"], cfg["hidden"], cfg["num_train"], cfg["num_val"], cfg["batch_size"], cfg["num_steps"]) == \
        (1, 16, 512, 256, 128, 8)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["epoch"] == 1
    assert {"epoch", "train_ppl", "val_ppl"} <= records[0].keys()
    assert f"{records[0]['val_ppl']:.1f}" == result.group(1)
    assert checkpoint.steps(run) == [1]


@pytest.mark.slow  # the per-step path itself is tested in-process (test_training.py)
def test_per_step_trains_like_fused(trained, run_python, work: Path) -> None:
    proc = run_python(["-m", "jaxrnn.cli", "train", "--model", "scratch", *TINY_FLAGS, "--per-step", "--out",
                       str(work / "per-step")], work)
    trained = {"scratch": trained["scratch"], "per-step": proc}
    fused, stepped = ([json.loads(line) for line in (work / r / "metrics.jsonl").read_text().splitlines()][0]
                      for r in ("scratch", "per-step"))
    for k in ("train_ppl", "val_ppl"):
        assert stepped[k] == pytest.approx(fused[k], rel=1e-5)
    assert result_line(trained["per-step"]).group(2) == result_line(trained["scratch"]).group(2)


@pytest.mark.parametrize("model", MODELS)
def test_sample_prints_the_training_text(trained, used, model: str) -> None:
    text = result_line(trained[model]).group(2)
    proc = used[f"sample-{model}"]
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == text + "\n"


def test_result_line_is_one_line_on_any_corpus(trained, used) -> None:
    """On a raw text the default prompt is the text's opening words (not 'time traveller'), the result
    line prints the sample as a Python literal, and `jaxrnn sample` prints the same text raw."""
    from jaxrnn.cli import result_line

    proc = trained["raw"]
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1, proc.stdout
    ppl, literal = re.fullmatch(r"perplexity (\d+\.\d), (.+)\n", proc.stdout).groups()
    sample = ast.literal_eval(literal)
    assert sample.startswith(RAW_PROMPT) and len(sample) == len(RAW_PROMPT) + 50
    assert proc.stdout == result_line(float(ppl), sample) + "\n"
    assert used["sample-raw"].returncode == 0, used["sample-raw"].stderr
    assert used["sample-raw"].stdout == sample + "\n"
    assert result_line(7.24, "a\nb 'c'") == "perplexity 7.2, \"a\\nb 'c'\""  # a newline reads \n
    assert result_line(7.24, "time traveller and") == "perplexity 7.2, 'time traveller and'"


def test_version(call, work: Path) -> None:
    import jaxrnn

    proc = call(["--version"], work)
    assert proc.returncode == 0 and proc.stdout == f"jaxrnn {jaxrnn.__version__}\n"


# name -> (arguments, what must be left as it was, what the last stderr line says after "jaxrnn: error: ");
# {run} is the trained scratch run directory.
BAD_INPUTS: dict[str, tuple[list[str], str | None, str]] = {
    "epochs-0": (["train", "--epochs", "0"], None, r"--epochs must be a positive integer, got 0; pass a value > 0"),
    "lr-not-a-number": (["train", "--lr", "abc"], None, r"argument --lr: 'abc' is not a number; see "),
    "missing-data": (["train", *TINY_FLAGS, "--data", "missing.txt", "--out", "missing-data"], "missing-data",
                     r"corpus .*/missing\.txt does not exist; pass --data FILE"),
    "sample-non-run": (["sample", "--run", "empty"], None, r"no checkpoint in empty; pass --run with a run directory"),
    "negative-num-preds": (["sample", "--run", "{run}", "--num-preds", "-1"], None,
                           r"--num-preds must be >= 0, got -1; pass 0 or more"),
    "empty-prefix": (["sample", "--run", "{run}", "--prefix", ""], None,
                     r"the prompt is empty; pass --prefix with at least one character"),
    "negative-temperature": (["sample", "--run", "{run}", "--temperature", "-1"], None,
                             r"--temperature must be a finite number >= 0, got -1\.0; 0 decodes greedily"),
    "existing-run": (["train", *TINY_FLAGS, "--out", "{run}"], None, r".*scratch already holds a run; pass --resume "),
    "model-contradicts-cell": (["train", "--model", "scratch", "--cell", "lstm", *TINY_FLAGS, "--out", "mc"], "mc",
                               r"--model scratch means --cell rnn --impl scratch, not --cell lstm; drop --model or "),
    "model-contradicts-impl": (["train", "--model", "concise", "--impl", "scratch", *TINY_FLAGS, "--out", "mi"], "mi",
                               r"--model concise means --cell rnn --impl flax, not --impl scratch; drop --model or "),
    "gru-reset-on-flax": (["train", "--cell", "gru", "--impl", "flax", "--gru-reset", "before", "--out", "gr"], "gr",
                          r"--cell gru-d2l has no Flax twin; pass --impl scratch"),
    "unknown-cell": (["train", "--cell", "transformer"], None, r"argument --cell: invalid choice: 'transformer'"),
    "seeds-0": (["train", "--seeds", "0", "--out", "s0"], "s0", r"--seeds 0 trains no replica; pass a count of 1 "),
    "seeds-repeated": (["train", "--seeds", "3,1,3", "--out", "sr"], "sr", r"--seeds names seed 3 twice"),
    "seeds-negative": (["train", "--seeds", "1,-2", "--out", "sn"], "sn", r"--seeds takes a count or seeds that are "
                                                                           r"whole numbers >= 0, got \(1, -2\)"),
    "seeds-not-numbers": (["train", "--seeds", "a,b"], None, r"argument --seeds: 'a,b' is neither a count nor seeds"),
    "seeds-per-step": (["train", "--seeds", "2", "--per-step", "--out", "sp"], "sp",
                       r"--per-step is the chapters' loop, one call a batch, and --seeds trains the replicas as one "),
    "seeds-with-resume": (["train", "--resume", "{run}", "--seeds", "2"], None,
                          r"--resume continues a run with its saved config; drop --seeds"),
    "unknown-cell-option": (["train", "--cell", "indrnn", "--cell-options", "heads=2", "--out", "co"], "co",
                            r"--cell indrnn has no option 'heads'; its options are u_min, u_max"),
    "option-of-a-cell-without": (["train", "--cell-options", "u_max=1", "--out", "cn"], "cn",
                                 r"--cell rnn has no option 'u_max'; it has none: drop --cell-options"),
    "cell-options-out-of-order": (["train", "--cell", "indrnn", "--cell-options", "u_min=0.9,u_max=0.5", "--out",
                                   "cr"], "cr", r"--cell-options for --cell indrnn: u_min 0\.9 is above u_max 0\.5; "
                                                r"pass u_min <= u_max"),
    "cell-options-not-pairs": (["train", "--cell", "indrnn", "--cell-options", "u_max"], None,
                               r"argument --cell-options: 'u_max' is not NAME=NUMBER, such as u_max=0\.5"),
    "top-k-when-greedy": (["sample", "--run", "{run}", "--top-k", "3"], None,
                          r"--top-k and --top-p restrict sampling, and temperature 0 decodes greedily; pass "),
    "top-p-above-one": (["sample", "--run", "{run}", "--temperature", "1", "--top-p", "1.5"], None,
                        r"--top-p must be in \(0, 1\], got 1\.5; 1 keeps every token"),
    "tie-without-matching-embed": (["train", *TINY_FLAGS, "--embed", "8", "--tie", "--out", "tie"], "tie",
                                   r"--tie shares .* needs --embed equal to --hidden \(8 != 16\); pass --embed 16"),
    "dropout-one": (["train", "--dropout", "1"], None,
                    r"--dropout must be in \[0, 1\), got 1\.0; pass a value in \[0, 1\)"),
    "unknown-optimizer": (["train", "--optimizer", "rmsprop"], None,
                          r"argument --optimizer: invalid choice: 'rmsprop'"),
    "launch-flags-not-together": (["train", "--distributed", "--coordinator", "127.0.0.1:1234", "--out", "lf"], "lf",
                                  r"--coordinator, --num-processes, --process-id go together; pass --num-processes "
                                  r"--process-id too"),
    "launch-flags-without-distributed": (["train", "--coordinator", "127.0.0.1:1234", "--num-processes", "2",
                                          "--process-id", "0", "--out", "lw"], "lw",
                                         r"--coordinator, --num-processes, --process-id launch a distributed run; add "
                                         r"--distributed, or drop them"),
    "coordinator-without-port": (["train", "--distributed", "--coordinator", "host0", "--num-processes", "2",
                                  "--process-id", "0", "--out", "cp"], "cp",
                                 r"argument --coordinator: 'host0' is not HOST:PORT"),
    "process-id-out-of-range": (["train", "--distributed", "--coordinator", "127.0.0.1:1234", "--num-processes", "2",
                                 "--process-id", "2", "--out", "pid"], "pid",
                                r"--process-id 2 is not below --num-processes 2; number the processes 0 to 1"),
    "distributed-without-out": (["train", "--distributed"], None, r"a distributed run needs --out RUN_DIR"),
    "distributed-with-devices": (["train", "--distributed", "--devices", "2", "--out", "dd"], "dd",
                                 r"a distributed run trains on every device of every process; drop --devices"),
    "distributed-per-step": (["train", "--distributed", "--per-step", "--out", "dp"], "dp",
                             r"--per-step is the chapter's one-process loop .*; drop it"),
    "eval-every-without-steps": (["train", "--eval-every", "5", "--out", "ee"], "ee",
                                 r"--eval-every counts optimizer steps of a run trained by --steps; pass --steps N"),
}


def test_contradicting_model_flags_name_both() -> None:
    """The chapters' --model and an explicit --cell/--impl that disagree: the error says which to drop."""
    from jaxrnn.config import Config
    from jaxrnn.errors import ConfigError

    with pytest.raises(ConfigError, match="--model scratch means --cell rnn --impl scratch, not --cell lstm"):
        Config(model="scratch", cell="lstm")
    assert Config(model="concise", cell="rnn").impl == "flax"  # agreeing flags are fine


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_exits_2_with_one_line(bad, work: Path, name: str) -> None:
    """Exit 2, nothing on stdout, no traceback, and a last stderr line naming this case's own problem."""
    proc = bad[name]
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    last = proc.stderr.splitlines()[-1]
    assert re.match("jaxrnn: error: " + BAD_INPUTS[name][2], last), last
    left_alone = BAD_INPUTS[name][1]
    if left_alone:
        assert not (work / left_alone).exists()  # no half-made run directory


def test_sample_prints_one_line_per_sample(used) -> None:
    proc = used["sample-many"]
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 3 and len(set(lines)) == 3
    assert all(line.startswith("time traveller") and len(line) == len("time traveller") + 40 for line in lines)


def test_existing_run_is_left_intact(bad, work: Path) -> None:
    """Refusing to train into a run directory leaves its metrics and checkpoints as they were."""
    assert "--force" in bad["existing-run"].stderr.splitlines()[-1]
    assert len((work / "scratch" / "metrics.jsonl").read_text().splitlines()) == 1
    assert checkpoint.steps(work / "scratch") == [1]


def _help_groups() -> dict[str, str]:
    """`jaxrnn train --help` cut at its group headings: heading -> the text under it."""
    from jaxrnn import cli

    text = cli.build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    parts = re.split(r"^(\S[^\n]*):\n", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_every_config_field_is_a_flag_in_its_group() -> None:
    """Each Config field is a train flag listed under its `setting`'s group (a switch as --NAME and
    --no-NAME); the help gives the field's default (its text restates none); a given flag reaches the
    config as the field's type."""
    import dataclasses

    from jaxrnn import cli
    from jaxrnn.config import GROUPS, Config, field_kind, flag

    groups = _help_groups()
    assert set(GROUPS) <= set(groups)
    parser = cli.build_parser()
    for f in dataclasses.fields(Config):
        name, kind = flag(f.name), field_kind(f)
        block = groups[f.metadata["group"]]
        first = flag(f.metadata["alias"]) + r" \w+, " if f.metadata["alias"] else ""  # a clearer name, shown first
        assert re.search(rf"^  {first}{name}\b", block, re.M), (name, f.metadata["group"])
        entry = re.search(rf"^  {first}{name}\b.*?(?=^  --|\Z)", block, re.M | re.S).group(0)
        if f.default is not None and kind is not bool:  # the default, from the field and only from it
            shown = f"{f.default:g}" if kind is float else str(f.default)
            assert f"(default {shown})" in " ".join(entry.split()) and "(default" not in f.metadata["help"], entry
        text = {bool: None, int: "3", float: "0.5", str: "flax", tuple: "0.8,0.1,0.1", dict: "u_max=0.5,heads=4"}[kind]
        if f.metadata["choices"]:
            text = f.metadata["choices"][-1]
        given = "--no-" + name[2:] if kind is bool and f.default else name  # a switch: the way off its default
        args = parser.parse_args(["train", given] + ([text] if text else []))
        want = {bool: not f.default, int: 3, float: 0.5, str: text, tuple: (0.8, 0.1, 0.1),
                dict: {"u_max": 0.5, "heads": 4}}[kind]
        assert cli._given(args) == {f.name: want}


@pytest.mark.parametrize(("flag", "value", "words"), [
    ("--hidden", "0", "a positive integer, got 0; pass a value > 0"),
    ("--warmup", "-1", r"an integer >= 0, got -1; pass a value >= 0"),
    ("--lr", "0", r"a positive finite number, got 0\.0; pass a value > 0"),
    ("--weight-decay", "-1", r"a finite number >= 0, got -1\.0; pass a value >= 0"),
    ("--dropout", "1.5", r"in \[0, 1\), got 1\.5"),
    ("--seed", "-2", r"in \[0, 2\*\*31\), got -2; pass a seed from 0 to 2147483647"),
    ("--seed", "2147483648", r"in \[0, 2\*\*31\), got 2147483648"),  # an int32 on the device
    ("--lr", "inf", r"a positive finite number, got inf"),
    ("--lr", "abc", r"'abc' is not a number"),
])
def test_bounds_are_checked_once_by_the_config(capsys, flag: str, value: str, words: str) -> None:
    """A number out of its field's range is refused by Config.validate with the flag's name (the
    parser only reads numbers), exit 2 and one line."""
    from jaxrnn import cli

    code = None
    try:
        code = cli.main(["train", flag, value])
    except SystemExit as e:  # argparse's own refusal of what is not a number
        code = e.code
    assert code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert re.match(rf"jaxrnn: error: (argument )?{flag}:? .*{words}", last), last


def test_a_switch_a_preset_turns_on_can_be_turned_off(capsys) -> None:
    """`--no-NAME` overrides a saved or preset `true`, and `--resume` refuses it by the name given."""
    from jaxrnn import cli
    from jaxrnn.config import Config

    args = cli.build_parser().parse_args(["train", "--preset", "d2l-scratch", "--tensorboard", "--no-curves"])
    assert cli.config_from_args(args) == Config(model="scratch", tensorboard=True, curves=False)
    args = cli.build_parser().parse_args(["train", "--preset", "lstm-2x256", "--embed", "256", "--tie", "--no-tie"])
    assert cli.config_from_args(args).tie is False  # the last of the two wins, as argparse's switches do
    assert cli.main(["train", "--resume", "somewhere", "--no-curves", "--tie"]) == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith("drop --tie --no-curves")


@pytest.mark.parametrize(("changes", "words"), [
    (dict(steps=100, eval_every=0), "--eval-every must be a positive integer, got 0"),
    (dict(steps=100, eval_every=-5), "--eval-every must be a positive integer, got -5"),
    (dict(save_every=0), "--save-every must be a positive integer, got 0"),
    (dict(epochs=10**400), None),
    (dict(tie="yes"), "--tie must be true or false, got 'yes'"),
    (dict(data=5), "--data must be a string, got 5"),
])
def test_a_config_refuses_what_it_cannot_train(changes: dict, words: str | None) -> None:
    """Out-of-range and ill-typed values, as a hand-edited config.json may hold, are refused by name:
    none is replaced by a default, and a huge integer is a number like any other."""
    from jaxrnn.config import Config
    from jaxrnn.errors import ConfigError

    if words is None:
        assert Config(**changes).epochs == 10**400
        return
    with pytest.raises(ConfigError, match=re.escape(words)):
        Config(**changes)


def test_every_subcommand_is_dispatched_by_name() -> None:
    """`main` runs a subcommand from `COMMANDS` by its name: every one the parser has, and nothing else."""
    from jaxrnn import cli

    assert set(cli.build_parser()._subparsers._group_actions[0].choices) == set(cli.COMMANDS)
