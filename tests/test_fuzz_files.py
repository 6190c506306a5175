"""Seeded fuzzing of program files and backup directories (issue 11, "done when").

Each case mutates a valid file (a value replaced by a hostile one, a key dropped or added, the
text cut or corrupted) and feeds it to ``load_program`` or to a resumed ``fit``. Every case
must end in a promptfit typed error or a correct run, and none may write or delete outside its
own directory, reach the network beyond loopback (``tests/_network_guard.py`` records every
attempt), or pay an LM call before its error.

Hypothesis runs derandomized (a fixed seed), so a failure reproduces on every run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import promptfit as pf
from promptfit.callbacks import Callback
from promptfit.callbacks.backup_and_restore import BackupAndRestore
from promptfit.errors import PromptfitError
from promptfit.testing import FakeLLMServer
from tests import _network_guard
from tests.conftest import Answer, Query, arithmetic_data

HOSTILE_STRINGS = [
    "http://203.0.113.5:8080/v1",
    "oobabooga/http://203.0.113.5:5000",
    "huggingface/bigcode/starcoder",
    "openai/gpt-4o",
    "../../escape.json",
    "/etc/passwd",
    "sub/victim.json",
    "abc",
    "NaN",
    "\ud800",
    "",
    "os>system",
    "#/$defs/A",
]

LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**6), max_value=10**6)
    | st.sampled_from([-1, 0, 10**6, 10**18, 2**63])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(HOSTILE_STRINGS)
)
VALUES = st.recursive(
    LEAVES,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.text(max_size=6) | st.sampled_from(["$ref", "api_key"]), children, max_size=3
        )
    ),
    max_leaves=6,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        # The first items only: a 625-number RNG state would otherwise draw most mutations.
        for index, value in enumerate(node[:3]):
            yield from _paths(value, (*prefix, index))


# Scalars that break a value of the right place but the wrong range or type: the edits a
# broken disk or an attacker makes to one number or string (epoch -5, step 10**6, "no" for a
# flag, a path through a planted link...).
HOSTILE_SCALARS = st.sampled_from(
    [-5, -1, 0, 2, 10**6, 2**63, True, False, None, 1.5, float("nan"), float("inf"), "1", "no"]
) | st.sampled_from(HOSTILE_STRINGS)


# Paths a file may name for promptfit to read, write or delete: "sub" is a link out of the run
# that every backup case plants, so "sub/victim.json" reaches the sentinel file outside.
HOSTILE_PATHS = ["sub/victim.json", "../../outside/victim.json", "/etc/passwd", "sub/../e0.json"]


def _is_leaf(node: Any) -> bool:
    return not isinstance(node, dict | list)


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    for key in path[:-1]:
        doc = doc[key]
    return doc


@st.composite
def mutated(draw: st.DrawFn, document: dict[str, Any]) -> bytes:
    """One mutation of ``document``, as the bytes of the file."""
    doc = json.loads(json.dumps(document))
    paths = [p for p in _paths(doc) if p]
    operation = draw(
        st.sampled_from(["leaf", "leaf", "leaf", "path", "path", "replace", "delete", "add", "raw"])
    )
    if operation == "raw":
        text = json.dumps(doc).encode()
        cut = draw(st.integers(min_value=0, max_value=len(text)))
        junk = draw(st.sampled_from([b"", b"\xff", b"}", b"[" * 2000, b"\x00"]))
        return text[:cut] + junk + text[cut + draw(st.integers(0, 3)) :]
    if operation == "path":
        # A string that names a file: a manifest entry's path, ProgramCheckpoint's saved list,
        # a cache path (any string leaf when the document has none of those).
        named = [p for p in paths if isinstance(_parent(doc, p)[p[-1]], str)]
        files = [p for p in named if p[-1] in ("path", "cache") or "saved" in p[:-1]]
        path = draw(st.sampled_from(files or named))
        _parent(doc, path)[path[-1]] = draw(st.sampled_from(HOSTILE_PATHS))
        return json.dumps(doc).encode()
    if operation == "leaf":
        leaves = [p for p in paths if _is_leaf(_parent(doc, p)[p[-1]])]
        path = draw(st.sampled_from(leaves))
        _parent(doc, path)[path[-1]] = draw(HOSTILE_SCALARS)
        return json.dumps(doc, allow_nan=True).encode()
    path = draw(st.sampled_from(paths))
    parent = _parent(doc, path)
    if operation == "replace":
        parent[path[-1]] = draw(VALUES)
    elif operation == "delete":
        del parent[path[-1]]
    else:
        target = parent[path[-1]] if isinstance(parent[path[-1]], dict) else parent
        if isinstance(target, dict):
            key = draw(st.text(max_size=8) | st.sampled_from(["api_base", "base_url", "epoch"]))
            target[key] = draw(VALUES)
    return json.dumps(doc, allow_nan=True).encode()


@contextlib.contextmanager
def _case_dir(root: Path) -> Iterator[Path]:
    """A fresh directory per case, as the cwd; nothing else under ``root`` may change."""
    before = sorted(p.name for p in root.iterdir())
    sentinel = (root / "outside" / "victim.json").read_text()
    case = Path(tempfile.mkdtemp(dir=root))
    old_cwd = os.getcwd()
    os.chdir(case)
    refused = len(_network_guard.violations())
    try:
        yield case
    finally:
        os.chdir(old_cwd)
        shutil.rmtree(case, ignore_errors=True)
        assert sorted(p.name for p in root.iterdir()) == before, "a file was written outside"
        assert (root / "outside" / "victim.json").read_text() == sentinel
        assert _network_guard.violations()[refused:] == [], "a request left loopback"


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz")
    (root / "outside").mkdir()
    (root / "outside" / "victim.json").write_text("precious")
    return root


def _lm(server: FakeLLMServer) -> pf.LanguageModel:
    return pf.LanguageModel(
        model=FakeLLMServer.model("arith", min_examples=1, tag="fuzz"),
        api_base=server.base_url,
        api_key="sk-fake",
        max_retries=1,
        retry_min_wait=0.01,
        retry_max_wait=0.05,
    )


async def _program(lm: pf.LanguageModel) -> pf.Program:
    inputs = pf.Input(data_model=Query)
    outputs = await pf.ChainOfThought(data_model=Answer, language_model=lm, name="solver")(inputs)
    program = pf.Program(inputs=inputs, outputs=outputs, name="calc")
    program.compile(
        reward=pf.rewards.ExactMatch(in_mask=["answer"]),
        optimizer=pf.optimizers.RandomFewShot(k=1),
        metrics=[pf.metrics.Accuracy(in_mask=["answer"]), pf.metrics.F1Score(in_mask=["answer"])],
    )
    return program


# -- program files -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def program_document(llm_server: FakeLLMServer, fuzz_root: Path) -> dict[str, Any]:
    program = asyncio.run(_program(_lm(llm_server)))
    path = program.save(fuzz_root / "outside" / "program.json")
    document = json.loads(path.read_text())
    path.unlink()
    return document


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_fuzzed_program_files(
    data: st.DataObject, program_document: dict[str, Any], fuzz_root: Path
) -> None:
    raw = data.draw(mutated(program_document))
    with _case_dir(fuzz_root) as case:
        path = case / "program.json"
        path.write_bytes(raw)
        try:
            # With a key, as a user would load it: without one every loaded program would stop
            # at its first call (missing credentials) and never run.
            program = pf.load_program(path, api_key="sk-fake")
        except PromptfitError as error:
            event(f"load: {type(error).__name__}")
            return
        # Loaded: it must be a working program whose LMs only talk to loopback.
        program.compile(reward=pf.rewards.ExactMatch(in_mask=["answer"]))
        x, y = arithmetic_data(1)
        try:
            logs = asyncio.run(program.evaluate(x, y, verbose=0))
        except PromptfitError as error:
            event(f"evaluate: {type(error).__name__}")
            return
        event("loaded and evaluated")
        assert 0.0 <= logs["reward"] <= 1.0


# -- backup directories --------------------------------------------------------------------------
class Crash(Callback):
    def __init__(self, armed: bool) -> None:
        super().__init__()
        self.armed = armed

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.armed and epoch == 0:
            raise RuntimeError("simulated crash")


def _callbacks(run: Path, armed: bool) -> list[Callback]:
    return [
        pf.callbacks.CSVLogger(run / "log.csv"),
        pf.callbacks.ProgramCheckpoint(
            str(run / "ckpt" / "e{epoch}.json"), monitor="reward", keep_top_k=1
        ),
        pf.callbacks.EarlyStopping(monitor="reward", patience=3),
        Crash(armed),
        BackupAndRestore(run / "backup", save_freq=1),
    ]


async def _fit(lm: pf.LanguageModel, run: Path, armed: bool) -> pf.Program:
    program = await _program(lm)
    x, y = arithmetic_data(4)
    await program.fit(
        x, y, epochs=2, batch_size=2, verbose=0, seed=1, callbacks=_callbacks(run, armed)
    )
    return program


@pytest.fixture(scope="module")
def backup_template(llm_server: FakeLLMServer, fuzz_root: Path) -> tuple[Path, pf.LanguageModel]:
    """A crashed run (backup after epoch 1 of 2) and the LM whose cache makes resumes cheap."""
    template = fuzz_root / "outside" / "template"
    lm = _lm(llm_server)
    with pytest.raises(RuntimeError, match="simulated crash"):
        asyncio.run(_fit(lm, template, armed=True))
    assert (template / "backup" / "backup.json").exists()
    return template, lm


def _backup_document(template: Path) -> dict[str, Any]:
    return json.loads((template / "backup" / "backup.json").read_text())


def _correct_histories(which: str, raw: bytes) -> list[list[int]]:
    """The histories a correct resume of the mutated run can end with."""
    try:
        state = json.loads(raw)["fit_state"] if which == "backup" else {}
    except (ValueError, KeyError, TypeError):
        state = {}
    state = state if isinstance(state, dict) else {}
    finished = type(state.get("epoch")) is int and state["epoch"] >= 2
    if finished or state.get("stop_training") is True:
        return [[0], [0, 1]]
    return [[0, 1]]


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
@pytest.mark.filterwarnings("ignore:BackupAndRestore. the callbacks differ")
# A fingerprint without one of its keys reads as a backup of an older promptfit: it resumes
# with this warning (and the optimizer state is still checked against the current optimizer).
@pytest.mark.filterwarnings("ignore:BackupAndRestore. the backup .* was written by an older")
def test_fuzzed_backups_resume_or_fail_before_any_lm_call(
    data: st.DataObject, backup_template: tuple[Path, pf.LanguageModel], fuzz_root: Path
) -> None:
    template, lm = backup_template
    which = data.draw(st.sampled_from(["backup", "backup", "manifest", "linked"]))
    extra: dict[Path, bytes] = {}
    if which == "backup":
        target, document = Path("backup/backup.json"), _backup_document(template)
    else:
        target = Path("ckpt/checkpoints.json")
        document = json.loads((template / target).read_text())
    if which == "linked":
        # The deletion attack needs two files edited together: a manifest entry with a
        # hostile path (and a score that retention may drop) and the same path in
        # ProgramCheckpoint's "saved" list in the backup.
        hostile = data.draw(st.sampled_from(HOSTILE_PATHS))
        entry = dict(document["checkpoints"][0], path=hostile, value=data.draw(HOSTILE_SCALARS))
        document["checkpoints"].insert(0, entry)
        raw = json.dumps(document, allow_nan=True).encode()
        backup = _backup_document(template)
        (key,) = [k for k in backup["fit_state"]["callbacks"] if k.endswith(":ProgramCheckpoint")]
        backup["fit_state"]["callbacks"][key]["saved"].insert(0, hostile)
        extra[Path("backup/backup.json")] = json.dumps(backup).encode()
    else:
        raw = data.draw(mutated(document))
    with _case_dir(fuzz_root) as case:
        run = case / "run"
        shutil.copytree(template, run, symlinks=True)
        # A planted link out of the run: a mutated path "sub/victim.json" (in the manifest or
        # in ProgramCheckpoint's saved list) reaches the sentinel only through it.
        (run / "ckpt" / "sub").symlink_to(fuzz_root / "outside", target_is_directory=True)
        (run / target).write_bytes(raw)
        for name, content in extra.items():
            (run / name).write_bytes(content)
        before = lm.usage.calls + lm.usage.cache_hits
        try:
            program = asyncio.run(_fit(lm, run, armed=False))
        except PromptfitError as error:
            event(f"{which}: {type(error).__name__}")
            assert lm.usage.calls + lm.usage.cache_hits == before, (
                "an LM call was paid before the error"
            )
            return
        event(f"{which}: resumed {program.history.epoch}")
        # The template crashed after epoch 0 of 2: a correct resume runs epoch 1 only (the
        # History holds both). Epoch 0 alone only if the edit validly said "done" or "stop".
        assert program.history.epoch in _correct_histories(which, raw), program.history.epoch
