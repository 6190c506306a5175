"""Guide 14: trained prompts in MLflow's Prompt Registry, loaded by alias elsewhere.

Training a prompt is only useful if the application that serves it gets the trained version,
and an application should not need to know promptfit (or a file path) to get it. MLflow 3 has
a Prompt Registry for this: named prompts with numbered versions, tags and movable aliases,
read with ``mlflow.genai.load_prompt("prompts:/<name>@<alias>")``.

``pf.callbacks.Monitor`` (guide 09) fills it for you. At the end of each successful fit, every
trainable generator's prompt (instructions and few-shot examples) becomes a version of the
registry prompt ``<program>.<module>`` with the alias ``latest-trained``; with a
``ProgramCheckpoint``, each new best also becomes a version and the alias ``best`` moves to
it. Each version is tagged with the run id, the epoch, the monitored score and a digest of its
content: a resumed run (``BackupAndRestore``) reuses its versions instead of adding copies.
The same Monitor logs the training and validation data as the run's *inputs* (the run page's
Datasets panel) and the trained program as a *logged model* (its JSON and the fit
configuration, with the final metrics).

A deployed program picks the trained prompt up without a code change::

    program = pf.load_program("calculator.json",
                              prompts={"solver": "prompts:/calculator.solver@best"})

What the registry returns is validated like an untrusted file: only the messages are read
(never a ``model_config`` that could pick another model or endpoint), templates are never
rendered, and the value must fit the generator's schema, or ``SerializationError`` names the
URI. Pass ``register_prompts=False``, ``log_datasets=False`` or ``log_model=False`` to the
Monitor to turn any of this off.

This guide trains two runs, reads the registry, loads the ``best`` prompt by alias in a
*separate process* (an application that only knows MLflow) and into a promptfit program
loaded from its file, and prints how to compare the two runs in the MLflow UI. Run it::

    python guides/14_mlflow_prompt_registry.py --lm fake --out runs/guide14
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap

import mlflow
from _common import arithmetic, calculator, cli, describe_backend, output_dir, section

import promptfit as pf

# An application that knows MLflow, not promptfit: it runs in a fresh process, with nothing
# of the training run in memory, and asks the registry for the prompt by alias.
APPLICATION = textwrap.dedent(
    """
    import json, sys
    import mlflow

    prompt = mlflow.genai.load_prompt(sys.argv[1])
    messages = prompt.format(inputs=json.dumps({"question": "What is 2 + 3?"}))
    print(f"  {prompt.uri} is version {prompt.version}; messages to send:")
    for message in messages:
        print(f"    {message['role']:>9}: {message['content']}")
    """
)


async def main() -> None:
    cli(__doc__)
    print("Backend:", describe_backend())
    out = output_dir()
    tracking_uri = f"sqlite:///{out / 'mlflow.db'}"
    x, y = arithmetic(6, step=6, start=1)
    validation = arithmetic(2, offset=80, step=6, start=1)

    section("1. Train two runs; the Monitor registers their prompts")
    run_ids = {}
    for k in (1, 2):
        program = await calculator(k=k, metrics=[pf.metrics.Accuracy(in_mask=["answer"])])
        monitor = pf.callbacks.Monitor(
            experiment_name="guide-14", run_name=f"few-shot-k{k}", tracking_uri=tracking_uri
        )
        checkpoint = pf.callbacks.ProgramCheckpoint(
            str(out / f"checkpoints-k{k}" / "calc-{epoch:02d}.json"),
            monitor="val_reward",
            save_best_only=True,
        )
        await program.fit(
            x,
            y,
            epochs=2,
            batch_size=3,
            validation_data=validation,
            callbacks=[checkpoint, monitor],
            seed=0,
            verbose=0,
        )
        run_ids[k] = monitor.run_id
        print(f"k={k}: run {monitor.run_id}")
    program.save(out / "calculator.json")  # what a deployment ships: structure + LM config

    section("2. The registry: versions, tags, aliases")
    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    for version in sorted(
        client.search_prompt_versions("calculator.solver"), key=lambda v: v.version
    ):
        tags = version.tags
        run, epoch = tags["promptfit.run_id"][:8], tags["promptfit.epoch"]
        score = f"{tags.get('promptfit.monitor')}={tags.get('promptfit.score')}"
        print(f"  v{version.version}: run {run} epoch {epoch} {score}")
    for alias in ("latest-trained", "best"):
        version = client.get_prompt_version_by_alias("calculator.solver", alias)
        print(f"  @{alias} -> v{version.version}")
    best = client.load_prompt("prompts:/calculator.solver@best")
    print("  the template an application formats:")
    print(textwrap.indent(json.dumps(best.template, indent=1)[:600], "    "))

    section("3. Load the best prompt by alias: an application in another process")
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    uri = "prompts:/calculator.solver@best"
    done = subprocess.run(
        [sys.executable, "-c", APPLICATION, uri],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    print(done.stdout.rstrip() or done.stderr[-2000:])
    if done.returncode != 0:
        raise SystemExit(done.returncode)

    section("3b. ...and a promptfit deployment: the shipped file, the registry's prompt")
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri  # where load_program finds the registry
    clients = {lm.name: lm for lm in program.all_language_models()}  # keys never live in files
    deployed = pf.load_program(
        out / "calculator.json", language_models=clients, prompts={"solver": uri}
    )
    prompt = deployed.get_module("solver").prompt.value
    print("  instructions:", repr(prompt["instructions"]))
    print("  examples    :", [ex["inputs"]["question"] for ex in prompt["examples"]])
    print("  answer      :", await deployed({"question": "What is 2 + 3?"}))

    section("4. Data sets and logged models of each run")
    for k, run_id in run_ids.items():
        run = client.get_run(run_id)
        inputs = [
            f"{d.dataset.name} ({d.dataset.digest}, {d.tags[0].value})"
            for d in run.inputs.dataset_inputs
        ]
        models = [o.model_id for o in run.outputs.model_outputs]
        model = client.get_logged_model(models[0])
        metrics = {m.key: m.value for m in model.metrics if m.key in ("reward", "val_reward")}
        print(f"  k={k}: datasets {inputs}")
        print(f"        logged model {model.name} {model.model_id} {metrics}")

    section("5. Compare the two runs in the UI")
    experiment = client.get_experiment_by_name("guide-14")
    runs = json.dumps(list(run_ids.values()))
    print(f"mlflow ui --backend-store-uri {tracking_uri} --port 5000")
    print(
        "then open http://127.0.0.1:5000/#/compare-runs?runs="
        f'{runs.replace(" ", "")}&experiments=["{experiment.experiment_id}"]'
    )
    print("(each run page lists its registered prompt version, its data sets and its model;")
    print(" the store is deleted at exit unless the guide runs with --out DIR)")


if __name__ == "__main__":
    asyncio.run(main())
