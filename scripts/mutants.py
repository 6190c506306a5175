"""Hand-written mutants of the training loop and callbacks: every one must be killed.

Why: a test suite that passes proves little unless it *fails* on broken code. Each mutant
below is one plausible bug (an off-by-one in the epoch loop, ``>`` for ``>=``, a swapped mode,
a restore that does not restore, a Retry-After that is ignored...), written as an exact
snippet of promptfit's source and its broken replacement, together with the tests that must
catch it. The script applies each mutant to a *temporary copy* of the package (the working
tree is never edited), runs those tests against the copy with a timeout, and exits 1 naming
every mutant that survived (its tests passed), every snippet that is no longer found in the
source (so the list cannot silently rot when the code changes: update the snippet with the
code), and every mutant whose tests could not even run.

Why hand-written and not mutmut/cosmic-ray: on the project's 2-core machine a generated run
over ``promptfit/training`` and ``promptfit/callbacks`` (hundreds of mutants, each needing the
LM server and real fits) takes hours, far beyond CI's budget; a short list aimed at the
behaviours the suite promises runs in minutes and names the test that guards each one.

Usage::

    python scripts/mutants.py            # baseline run, then every mutant
    python scripts/mutants.py --check    # only check that every snippet is still found
    python scripts/mutants.py --list     # names and their tests
    python scripts/mutants.py --only epoch-loop-off-by-one --only csv-drops-a-column

Run it from the repository root; it needs the test extras (pytest, the fake LLM server).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    """One bug: ``original`` (found exactly once in ``path``) becomes ``mutated``."""

    name: str
    path: str
    original: str
    mutated: str
    tests: tuple[str, ...]


T = "promptfit/training/trainer.py"
LOOP = "promptfit/training/loop.py"
CB = "promptfit/callbacks/"

MUTANTS: tuple[Mutant, ...] = (
    # -- the training loop -----------------------------------------------------------------
    Mutant(
        "epoch-loop-off-by-one",
        LOOP,
        "while epoch < state.epochs and not program.stop_training:",
        "while epoch <= state.epochs and not program.stop_training:",
        ("tests/test_fit.py::test_random_few_shot_improves_reward",),
    ),
    Mutant(
        "initial-epoch-ignored",
        T,
        "            requested_seed=requested_seed,\n            epochs=epochs,\n"
        "            epoch=initial_epoch,\n",
        "            requested_seed=requested_seed,\n            epochs=epochs,\n"
        "            epoch=0,\n",
        ("tests/test_fit_loop.py::test_initial_epoch_continues_the_epoch_numbering_and_shuffle",),
    ),
    Mutant(
        "shuffle-ignores-the-epoch",
        LOOP,
        'random.Random(f"{state.seed}:{epoch}").shuffle(order)',
        'random.Random(f"{state.seed}").shuffle(order)',
        ("tests/test_fit_loop.py::test_initial_epoch_continues_the_epoch_numbering_and_shuffle",),
    ),
    Mutant(
        "validation-split-takes-the-head",
        "promptfit/training/data.py",
        "        xs, val_xs = xs[:-n_val], xs[-n_val:]\n"
        "        ys, val_ys = ys[:-n_val], ys[-n_val:]\n",
        "        xs, val_xs = xs[n_val:], xs[:n_val]\n"
        "        ys, val_ys = ys[n_val:], ys[:n_val]\n",
        ("tests/test_fit_loop.py::test_validation_split_takes_the_tail_before_shuffling",),
    ),
    Mutant(
        "validation-batch-size-ignored",
        T,
        "val_batches = split_batches(len(val_xs), val_batch_size)",
        "val_batches = split_batches(len(val_xs), batch_size)",
        ("tests/test_fit_loop.py::test_validation_batch_size_sets_the_validation_batches",),
    ),
    Mutant(
        "stop-training-ignored-mid-epoch",
        LOOP,
        "        if program.stop_training:\n            break\n",
        "        if False:\n            break\n",
        (
            "tests/test_small_callbacks.py"
            "::test_budget_stopping_stops_at_the_batch_that_reaches_max_calls",
        ),
    ),
    # -- EarlyStopping -----------------------------------------------------------------------
    Mutant(
        "min-delta-not-strict",
        CB + "_monitoring.py",
        "return current - self.min_delta > reference",
        "return current - self.min_delta >= reference",
        ("tests/test_early_stopping.py::test_min_delta_is_strict_and_absolute",),
    ),
    Mutant(
        "mode-max-min-swapped",
        CB + "_monitoring.py",
        'if self.mode == "max":\n            return current - self.min_delta > reference',
        'if self.mode == "min":\n            return current - self.min_delta > reference',
        ("tests/test_early_stopping.py::test_mode_auto_min_and_explicit_mode",),
    ),
    Mutant(
        "patience-off-by-one",
        CB + "early_stopping.py",
        "if self.wait >= self.patience and epoch > 0:",
        "if self.wait > self.patience and epoch > 0:",
        ("tests/test_early_stopping.py::test_patience_counts_epochs_without_improvement",),
    ),
    Mutant(
        "restore-best-variables-not-restoring",
        CB + "early_stopping.py",
        "            self.program.set_variables(self.best_variables)\n",
        "            pass\n",
        ("tests/test_early_stopping.py::test_restore_best_variables",),
    ),
    # -- ProgramCheckpoint, BackupAndRestore, CSVLogger, History, ProgbarLogger ----------------
    Mutant(
        "save-best-only-ignored",
        CB + "program_checkpoint.py",
        "if self.save_best_only and not is_best:",
        "if False and not is_best:",
        ("tests/test_program_checkpoint.py::test_save_best_only_with_threshold",),
    ),
    Mutant(
        "backup-not-restored",
        CB + "backup_and_restore.py",
        "        found = self._read_backup()\n        if found is None:\n",
        "        found = self._read_backup()\n        if True:\n",
        ("tests/test_backup_and_restore.py::test_integer_save_freq_resumes_mid_epoch",),
    ),
    Mutant(
        "no-backup-before-the-first-lm-call",
        CB + "backup_and_restore.py",
        "instead of the calls they were.\n            self._save()\n",
        "instead of the calls they were.\n",
        (
            "tests/test_sigkill_random.py::"
            "test_a_kill_before_the_first_epoch_ends_counts_its_paid_calls_once",
        ),
    ),
    Mutant(
        "csv-drops-a-column",
        CB + "csv_logger.py",
        'self.header = ["epoch", *sorted(k for k in self._pending[0] if k != "epoch")]',
        'self.header = ["epoch", *sorted(k for k in self._pending[0] if k != "epoch")[1:]]',
        ("tests/test_csv_logger.py::test_epoch_first_sorted_keys_and_na_for_missing",),
    ),
    Mutant(
        "csv-append-ignores-the-backup",
        CB + "csv_logger.py",
        "        if restored is not None:\n",
        "        if restored is not None and not self.append:\n",
        ("tests/test_csv_logger.py::test_append_true_with_a_resume_keeps_earlier_runs_rows",),
    ),
    Mutant(
        "history-drops-the-epoch-index",
        CB + "history.py",
        "        self.epoch.append(epoch)\n",
        "        self.epoch.append(n)\n",
        ("tests/test_fit_loop.py::test_initial_epoch_continues_the_epoch_numbering_and_shuffle",),
    ),
    Mutant(
        "progbar-epoch-numbering-off-by-one",
        CB + "progbar_logger.py",
        "print(f\"Epoch {epoch + 1}/{self.params.get('epochs', '?')} - {parts}\", flush=True)",
        "print(f\"Epoch {epoch}/{self.params.get('epochs', '?')} - {parts}\", flush=True)",
        ("tests/test_progbar_logger.py",),
    ),
    # -- BudgetStopping ------------------------------------------------------------------------
    Mutant(
        "budget-limit-off-by-one",
        CB + "budget_stopping.py",
        "if limit is not None and consumed[key] >= limit:",
        "if limit is not None and consumed[key] > limit:",
        (
            "tests/test_small_callbacks.py"
            "::test_budget_stopping_stops_when_a_batch_lands_exactly_on_the_limit",
        ),
    ),
    Mutant(
        "budget-restored-amount-dropped",
        CB + "budget_stopping.py",
        "            self._rebase(self._pending)\n            self._pending = None\n"
        "        elif not self._restored:",
        "            self._rebase({})\n            self._pending = None\n"
        "        elif not self._restored:",
        ("tests/test_small_callbacks.py::test_budget_state_survives_a_process_restart",),
    ),
    # -- optimizers and the LM client the loop depends on ---------------------------------------
    Mutant(
        "proposer-never-sees-the-scores",
        "promptfit/optimizers/instruction_optimizer.py",
        '"scored_instructions": self._history(path),',
        '"scored_instructions": [],',
        (
            "tests/test_instruction_optimizer.py"
            "::test_the_optimizer_searches_past_rejected_proposals",
        ),
    ),
    Mutant(
        "retry-after-ignored",
        "promptfit/language_models/retrying.py",
        "        if asked is None:\n            return backoff\n",
        "        if True:\n            return backoff\n",
        ("tests/test_language_model.py::test_retry_after_is_honoured",),
    ),
)


def _find_errors(mutants: tuple[Mutant, ...]) -> list[str]:
    """Snippets that are missing, ambiguous or unchanged: the list must follow the code."""
    errors = []
    for mutant in mutants:
        path = ROOT / mutant.path
        if not path.is_file():
            errors.append(f"{mutant.name}: {mutant.path} does not exist")
            continue
        count = path.read_text().count(mutant.original)
        if count != 1:
            errors.append(
                f"{mutant.name}: the original snippet occurs {count} times in {mutant.path} "
                "(must be exactly once; update the snippet to the current code)"
            )
        if mutant.original == mutant.mutated:
            errors.append(f"{mutant.name}: the mutated snippet equals the original")
        for test in mutant.tests:
            if not (ROOT / test.split("::", 1)[0]).is_file():
                errors.append(f"{mutant.name}: test file of {test} does not exist")
    return errors


def _copy_tree(dest: Path) -> None:
    """The package, the tests and the pytest configuration, without bytecode caches."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    shutil.copytree(ROOT / "promptfit", dest / "promptfit", ignore=ignore)
    shutil.copytree(ROOT / "tests", dest / "tests", ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")


def _env(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    # The copy first and alone: the working tree (or an editable install) must not win.
    env["PYTHONPATH"] = str(copy)
    # No bytecode: a mutated file rewritten within the same second at the same size would
    # otherwise be run from a stale .pyc of the previous mutant.
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    return env


def _pytest(copy: Path, tests: list[str], timeout: float) -> tuple[int | None, float, str]:
    """Run ``tests`` against the copy: (exit code or None on timeout, seconds, output tail)."""
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    started = time.monotonic()
    try:
        done = subprocess.run(
            command, cwd=copy, env=_env(copy), capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as expired:
        out = expired.stdout or ""
        text = out.decode(errors="replace") if isinstance(out, bytes) else out
        return None, time.monotonic() - started, text[-2000:]
    return done.returncode, time.monotonic() - started, (done.stdout + done.stderr)[-2000:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check the snippets")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--only", action="append", default=[], help="run this mutant only")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per mutant")
    args = parser.parse_args(argv)

    mutants = MUTANTS
    if args.only:
        unknown = set(args.only) - {m.name for m in MUTANTS}
        if unknown:
            print(f"unknown mutant(s): {sorted(unknown)}", file=sys.stderr)
            return 2
        mutants = tuple(m for m in MUTANTS if m.name in args.only)
    if args.list:
        for mutant in mutants:
            print(f"{mutant.name:40} {mutant.path}\n{'':40} {' '.join(mutant.tests)}")
        return 0
    if args.check:
        errors = _find_errors(mutants)
        for error in errors:
            print(f"mutants: {error}", file=sys.stderr)
        if not errors:
            print(f"mutants: all {len(mutants)} snippets found")
        return 1 if errors else 0
    return run_mutants(mutants, baseline=not args.no_baseline, timeout=args.timeout)


def run_mutants(mutants: tuple[Mutant, ...], *, baseline: bool, timeout: float) -> int:
    """Apply each mutant to a temporary copy and run its tests; 0 when every one is killed."""
    errors = _find_errors(mutants)
    if errors:
        print("mutants: the list no longer matches the code:", file=sys.stderr)
        for error in errors:
            print(f"  {error}", file=sys.stderr)
        return 1
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="promptfit-mutants-") as tmp:
        copy = Path(tmp)
        _copy_tree(copy)
        probe = subprocess.run(
            [sys.executable, "-c", "import promptfit; print(promptfit.__file__)"],
            cwd=copy, env=_env(copy), capture_output=True, text=True, check=False,
        )  # fmt: skip
        if not probe.stdout.strip().startswith(str(copy)):
            print(f"mutants: the copy is not the promptfit imported: {probe.stdout}{probe.stderr}")
            return 1
        if baseline:
            tests = sorted({t for m in mutants for t in m.tests})
            code, seconds, tail = _pytest(copy, tests, timeout * 2)
            print(f"baseline (no mutant): exit {code} in {seconds:.0f} s", flush=True)
            if code != 0:
                print(f"mutants: the tests fail without any mutant:\n{tail}")
                return 1
        survivors: list[str] = []
        broken: list[str] = []
        for mutant in mutants:
            path = copy / mutant.path
            pristine = path.read_text()
            path.write_text(pristine.replace(mutant.original, mutant.mutated, 1))
            try:
                code, seconds, tail = _pytest(copy, list(mutant.tests), timeout)
            finally:
                path.write_text(pristine)
            if code == 1:
                verdict = "killed"
            elif code is None:
                verdict = "killed (timeout)"
            elif code == 0:
                verdict = "SURVIVED"
                survivors.append(mutant.name)
            else:
                verdict = f"ERROR (pytest exit {code})"
                broken.append(mutant.name)
            print(f"{verdict:18} {seconds:6.0f} s  {mutant.name}", flush=True)
            if code not in (1, None):
                print("\n".join(f"    {line}" for line in tail.splitlines()[-15:]))
    total = time.monotonic() - started
    print(f"mutants: {len(mutants)} run in {total:.0f} s", flush=True)
    for name in survivors:
        print(f"mutants: SURVIVED: {name} (its tests pass on the broken code)")
    for name in broken:
        print(f"mutants: ERROR: {name} (its tests could not run; fix the mutant)")
    failed = len(survivors) + len(broken)
    if not failed:
        print("mutants: every mutant was killed")
    # Last, in the plain "N passed, N failed" form CI logs are read for (passed = killed).
    print(f"mutants: {len(mutants) - failed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
