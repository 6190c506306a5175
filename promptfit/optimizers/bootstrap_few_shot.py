"""``BootstrapFewShot``: demonstrations for every step, from whole-program runs that succeeded.

The idea is DSPy's ``BootstrapFewShot`` / ``BootstrapFewShotWithRandomSearch``: run the
program (or a stronger *teacher*) on training examples, keep the runs whose reward reached a
threshold, and turn what *each* generator received and produced in those runs into that
generator's demonstrations -- so the intermediate steps of a multi-step program get
demonstrations too, although only the final output has a label. Labelled ``(x, y)`` pairs are
mixed in for generators that map the program input straight to its output. Demonstration sets
are then searched with the selection protocol of
:class:`~promptfit.optimizers.PopulationOptimizer` (races on paired evidence, validation
choice, budget), which plays the part of DSPy's random search with selection on a validation
set.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from promptfit.errors import ConfigurationError
from promptfit.language_models.language_model import LanguageModel
from promptfit.optimizers.demonstrations import add_demo, demo_key, label_demo, sample_diverse
from promptfit.optimizers.optimizer import PopulationOptimizer
from promptfit.training.arguments import check_int
from promptfit.variables.overrides import override_language_model

if TYPE_CHECKING:
    from promptfit.modules.traces import ModuleTrace
    from promptfit.programs.program import Program
    from promptfit.training.outcome import BatchOutcome

__all__ = ["BootstrapFewShot"]


class BootstrapFewShot(PopulationOptimizer):
    """Bootstrap demonstrations for every trainable generator and search over demo sets.

    After every training batch, the examples of the batch not seen before are traced: by the
    program itself (its own batch run, at no extra cost), or by ``teacher``. Every generator
    call of an example whose reward reached ``min_reward`` becomes a *bootstrapped*
    demonstration of that generator (intermediate generators included). For a generator that
    reads the program input ``x`` and whose output model accepts the label ``y``, the labelled
    pair is kept as a *labelled* demonstration.

    Candidates (demonstration sets for all trainable generators at once) follow DSPy's random
    search: the first is labelled demonstrations only, the second the first
    ``max_bootstrapped_demos`` bootstrapped ones in the order they were found, then random
    subsets of random size in ``[1, max_bootstrapped_demos]``; each is topped up with labelled
    demonstrations to ``max_labeled_demos`` in total. Random subsets and top-ups are spread
    over the distinct outputs (balanced labels for a classifier; see
    :mod:`promptfit.optimizers.demonstrations`). Candidates race the current variables on
    paired evidence and, with validation data, each epoch ends on the best validated one (see
    :class:`~promptfit.optimizers.PopulationOptimizer`).

    Args:
        max_bootstrapped_demos: Most bootstrapped demonstrations per generator.
        max_labeled_demos: Demonstrations per generator after topping up with labelled pairs
            (no top-up when the bootstrapped ones already reach it).
        min_reward: Lowest reward of a whole-program run for its steps to become
            demonstrations.
        teacher: ``None`` (the program traces itself), a :class:`~promptfit.LanguageModel`
            (the program runs with every generator calling it instead of its own model), or
            another :class:`~promptfit.Program` whose generators have the same names as the
            student's (e.g. the same program built on a stronger model). The teacher's calls
            count towards ``max_lm_calls`` and the logs.
        num_candidates: Demonstration sets racing at a time.
        population_size: Scored candidates kept.
        max_pool: Demonstrations kept per generator and kind (oldest dropped first).
        confidence: 1 - the chance that a candidate which is in truth no better replaces the
            current variables.
        max_looks: Training batches a candidate may race before it is dropped.
        max_lm_calls: Most LM calls the whole fit may make, or ``None``.
        seed: RNG seed (defaults to the ``fit`` seed).

    Example:
        ```python
        import promptfit as pf

        teacher = pf.LanguageModel(model="openai/big-model", api_base="http://127.0.0.1:8000/v1")
        optimizer = pf.optimizers.BootstrapFewShot(
            max_bootstrapped_demos=3, max_labeled_demos=4, teacher=teacher, max_lm_calls=400
        )
        # program.compile(reward=pf.rewards.ExactMatch(), optimizer=optimizer)
        # await program.fit(x, y, validation_data=(x_val, y_val), epochs=5)
        ```
    """

    def __init__(
        self,
        max_bootstrapped_demos: int = 4,
        max_labeled_demos: int = 4,
        min_reward: float = 1.0,
        teacher: Program | LanguageModel | None = None,
        num_candidates: int = 2,
        population_size: int = 10,
        max_pool: int = 256,
        confidence: float = 0.95,
        max_looks: int = 5,
        max_lm_calls: int | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(
            num_candidates=num_candidates,
            population_size=population_size,
            confidence=confidence,
            max_looks=max_looks,
            max_lm_calls=max_lm_calls,
            seed=seed,
        )
        from promptfit.programs.program import Program

        check_int("max_bootstrapped_demos", max_bootstrapped_demos, minimum=0)
        check_int("max_labeled_demos", max_labeled_demos, minimum=0)
        if max_bootstrapped_demos == 0 and max_labeled_demos == 0:
            raise ConfigurationError(
                "`max_bootstrapped_demos` and `max_labeled_demos` are both 0: there would be "
                "no demonstrations to search; set at least one of them above 0."
            )
        check_int("max_pool", max_pool, minimum=1)
        if teacher is not None and not isinstance(teacher, LanguageModel | Program):
            raise ConfigurationError(
                "`teacher` must be None, a pf.LanguageModel or a pf.Program, got "
                f"{type(teacher).__name__}."
            )
        self.max_bootstrapped_demos = max_bootstrapped_demos
        self.max_labeled_demos = max_labeled_demos
        self.min_reward = float(min_reward)
        self.teacher = teacher
        self.max_pool = max_pool
        self._reset_pools()

    def _reset_pools(self) -> None:
        self.bootstrapped: dict[str, list[dict[str, Any]]] = {}
        self.labeled: dict[str, list[dict[str, Any]]] = {}
        self.traced: list[str] = []
        self.proposed = 0

    def build(self, program: Program, seed: int) -> None:
        super().build(program, seed)
        self._reset_pools()

    @property
    def language_models(self) -> list[Any]:
        if isinstance(self.teacher, LanguageModel):
            return [self.teacher]
        if self.teacher is not None:
            return list(self.teacher.language_models)
        return []

    # -- harvesting ------------------------------------------------------------------------
    def _trainable_generators(self) -> set[str]:
        return {v.path.split("/", 1)[0] for v in self.program.trainable_variables}

    async def _teacher_traces(
        self, xs: list[Any], ys: list[Any]
    ) -> tuple[list[list[ModuleTrace]], list[float]]:
        if isinstance(self.teacher, LanguageModel):
            with override_language_model(self.teacher):
                outcome = await self.program.run_batch(xs, ys, trace=True)  # type: ignore[attr-defined]
            return outcome.traces, outcome.rewards
        assert self.teacher is not None
        teacher_outcome = await self.teacher.predict_on_batch(xs, trace=True)
        reward = self.program.reward  # type: ignore[attr-defined]
        rewards = []
        for y, pred in zip(ys, teacher_outcome.predictions, strict=True):
            rewards.append(0.0 if pred is None else float(await reward(y, pred)))
        return teacher_outcome.traces, rewards

    async def observe(self, outcome: BatchOutcome) -> None:
        """Trace the batch's new examples and harvest demonstrations from the good runs."""
        seen = set(self.traced)
        new = [
            i for i, x in enumerate(outcome.x) if demo_key(x.model_dump(mode="json")) not in seen
        ]
        if not new:
            return
        xs = [outcome.x[i] for i in new]
        ys = [outcome.y[i] for i in new]
        if self.teacher is None:
            traces = [outcome.traces[i] for i in new]
            rewards = [outcome.rewards[i] for i in new]
        else:
            traces, rewards = await self._teacher_traces(xs, ys)
        trainable = self._trainable_generators()
        for x, y, example_traces, reward in zip(xs, ys, traces, rewards, strict=True):
            self.traced.append(demo_key(x.model_dump(mode="json")))
            for trace in example_traces:
                if trace.module not in trainable:
                    continue
                if reward >= self.min_reward and trace.outputs is not None:
                    pool = self.bootstrapped.setdefault(trace.module, [])
                    add_demo(pool, trace.inputs, trace.outputs, self.max_pool)
                label = label_demo(self.program, trace.module, x, y, trace.inputs)
                if label is not None:
                    add_demo(
                        self.labeled.setdefault(trace.module, []),
                        trace.inputs,
                        label,
                        self.max_pool,
                    )
        self.traced = self.traced[-4 * self.max_pool :]

    # -- proposing -------------------------------------------------------------------------
    def _demos(self, module: str, index: int) -> list[dict[str, Any]]:
        boot = self.bootstrapped.get(module, [])
        labeled = self.labeled.get(module, [])
        if index == 0 or not boot or self.max_bootstrapped_demos == 0:
            chosen: list[dict[str, Any]] = []
        elif index == 1:
            chosen = boot[: self.max_bootstrapped_demos]
        else:
            size = self.rng.randint(1, min(self.max_bootstrapped_demos, len(boot)))
            chosen = sample_diverse(self.rng, boot, size)
        room = self.max_labeled_demos - len(chosen)
        if room > 0 and labeled:
            chosen = [*chosen, *sample_diverse(self.rng, labeled, room, already=chosen)]
        return copy.deepcopy(chosen)

    async def propose(self, parent: dict[str, Any], outcome: BatchOutcome) -> dict[str, Any] | None:
        index = self.proposed
        self.proposed += 1
        candidate = copy.deepcopy(parent)
        changed = False
        for path, value in candidate.items():
            if "examples" not in value:
                continue
            demos = self._demos(path.split("/", 1)[0], index)
            if demos and demos != value["examples"]:
                value["examples"] = demos
                changed = True
        return candidate if changed else None

    # -- state and config ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "bootstrapped": copy.deepcopy(self.bootstrapped),
            "labeled": copy.deepcopy(self.labeled),
            "traced": list(self.traced),
            "proposed": self.proposed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.bootstrapped = copy.deepcopy(state["bootstrapped"])
        self.labeled = copy.deepcopy(state["labeled"])
        self.traced = list(state["traced"])
        self.proposed = state["proposed"]

    def get_config(self) -> dict[str, Any]:
        teacher: dict[str, Any] | None = None
        if isinstance(self.teacher, LanguageModel):
            teacher = {"language_model": self.teacher.get_config()}
        elif self.teacher is not None:
            teacher = {"program": self.teacher.get_config()}
        return {
            **super().get_config(),
            "max_bootstrapped_demos": self.max_bootstrapped_demos,
            "max_labeled_demos": self.max_labeled_demos,
            "min_reward": self.min_reward,
            "teacher": teacher,
            "max_pool": self.max_pool,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> BootstrapFewShot:
        config = dict(config)
        teacher_config = config.pop("teacher", None)
        teacher: Any = None
        if teacher_config is not None and "language_model" in teacher_config:
            teacher = LanguageModel.from_config(teacher_config["language_model"])
        elif teacher_config is not None:
            from promptfit.programs.program import Program

            teacher = Program.from_config(teacher_config["program"])
        return cls(teacher=teacher, **config)
