"""Invoice extraction: turn free-text emails into a typed record with several fields.

Structured extraction is where typed outputs pay off: the ``Invoice`` data model below has a
string, an enum, a float, a date, a boolean and a list. Its JSON schema is what the language
model must produce (constrained decoding on the embedded model, ``response_format`` on hosted
ones), and pydantic validates every reply, so downstream code receives an ``Invoice`` or
``None``, never half-parsed text.

Extraction also needs a reward that gives *partial credit*: an answer with five fields right
out of six is better than one with none, and an optimizer can only climb a slope it can see.
``field_reward`` scores the share of fields that match (numbers within a cent, strings
case-insensitively), and one ``FieldAccuracy`` metric per field shows which fields are hard.

Bound what can grow: ``max_length`` on strings and lists is part of the schema, so a small
model under constrained decoding cannot loop in a list until it runs out of tokens (and
returns truncated, invalid JSON).

Run it::

    python examples/extraction/main.py                 # embedded offline model
    python examples/extraction/main.py --lm fake       # deterministic test server
    python examples/extraction/main.py --lm openai/gpt-4o-mini

On the fake backend the ``echo`` brain answers (it copies the input text into string fields),
so the scores there only prove that the pipeline runs; use a real model to see extraction.
"""

from __future__ import annotations

import asyncio
import datetime
import sys
from pathlib import Path
from typing import Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "guides"))
from _common import cli, describe_backend, language_model, output_dir, section

import promptfit as pf


class Email(pf.DataModel):
    text: str = pf.Field(description="An email that mentions an invoice")


class Invoice(pf.DataModel):
    # Bounds (max_length) become part of the JSON schema: they tell the model what is expected
    # and, under constrained decoding, stop a small model from looping in a string or a list.
    vendor: str = pf.Field(description="Company that issued the invoice", max_length=40)
    invoice_number: str = pf.Field(description="The invoice identifier, as written", max_length=20)
    total: float = pf.Field(description="Amount due, as a number without currency sign")
    currency: Literal["USD", "EUR", "GBP"] = pf.Field(description="ISO currency code")
    due_date: datetime.date = pf.Field(description="Payment due date (YYYY-MM-DD)")
    paid: bool = pf.Field(description="True if the email says it is already paid")
    items: list[str] = pf.Field(description="Names of the billed items or services", max_length=4)


EMAILS: list[tuple[str, dict[str, Any]]] = [
    (
        "Hi, attached is invoice INV-1042 from Acme Corp for 3 widget boxes and shipping. "
        "The total of $1,250.00 is due on 2024-07-15. Thanks!",
        {
            "vendor": "Acme Corp",
            "invoice_number": "INV-1042",
            "total": 1250.0,
            "currency": "USD",
            "due_date": "2024-07-15",
            "paid": False,
            "items": ["widget boxes", "shipping"],
        },
    ),
    (
        "Payment received for Globex invoice 2024-77 (EUR 89.90, consulting hours). "
        "It was due 2024-06-30; nothing left to pay.",
        {
            "vendor": "Globex",
            "invoice_number": "2024-77",
            "total": 89.9,
            "currency": "EUR",
            "due_date": "2024-06-30",
            "paid": True,
            "items": ["consulting hours"],
        },
    ),
    (
        "Initech sent bill #A-17: GBP 420 for printer repair and toner, payable by 1 August 2024.",
        {
            "vendor": "Initech",
            "invoice_number": "A-17",
            "total": 420.0,
            "currency": "GBP",
            "due_date": "2024-08-01",
            "paid": False,
            "items": ["printer repair", "toner"],
        },
    ),
    (
        "Umbrella Ltd invoice no. U-5531, hosting for June, 59.99 USD, already settled by "
        "card on the due date 2024-06-05.",
        {
            "vendor": "Umbrella Ltd",
            "invoice_number": "U-5531",
            "total": 59.99,
            "currency": "USD",
            "due_date": "2024-06-05",
            "paid": True,
            "items": ["hosting"],
        },
    ),
    (
        "Reminder: Stark Industries invoice SI-300 for 2 laptops (EUR 2,400) is due "
        "2024-09-10 and still open.",
        {
            "vendor": "Stark Industries",
            "invoice_number": "SI-300",
            "total": 2400.0,
            "currency": "EUR",
            "due_date": "2024-09-10",
            "paid": False,
            "items": ["laptops"],
        },
    ),
    (
        "Wayne Enterprises, invoice WE-9: security audit, $3,000, due 2024-10-01. "
        "Please confirm receipt.",
        {
            "vendor": "Wayne Enterprises",
            "invoice_number": "WE-9",
            "total": 3000.0,
            "currency": "USD",
            "due_date": "2024-10-01",
            "paid": False,
            "items": ["security audit"],
        },
    ),
    (
        "Hooli paid: invoice H-12 (GBP 15.50, coffee beans and filters), due date was 2024-05-20.",
        {
            "vendor": "Hooli",
            "invoice_number": "H-12",
            "total": 15.5,
            "currency": "GBP",
            "due_date": "2024-05-20",
            "paid": True,
            "items": ["coffee beans", "filters"],
        },
    ),
    (
        "Vandelay Industries invoice VI-808 for latex gloves, 120 EUR, due 2024-11-11, "
        "not yet paid.",
        {
            "vendor": "Vandelay Industries",
            "invoice_number": "VI-808",
            "total": 120.0,
            "currency": "EUR",
            "due_date": "2024-11-11",
            "paid": False,
            "items": ["latex gloves"],
        },
    ),
]
FIELDS = list(Invoice.model_fields)


def same(field: str, expected: Any, predicted: Any) -> bool:
    """Field equality with the tolerance a human reviewer would apply."""
    if field == "total":
        try:
            return abs(float(expected) - float(predicted)) < 0.01
        except (TypeError, ValueError):
            return False
    if field == "items":
        norm = lambda items: sorted(str(i).strip().lower() for i in items or [])  # noqa: E731
        return norm(expected) == norm(predicted)
    if isinstance(expected, str) and isinstance(predicted, str):
        return expected.strip().lower() == predicted.strip().lower()
    return expected == predicted


def field_reward(y_true: dict[str, Any], y_pred: dict[str, Any]) -> float:
    """Share of the ground truth's fields the prediction got right (partial credit)."""
    return sum(same(f, y_true[f], y_pred.get(f)) for f in y_true) / len(y_true)


class FieldAccuracy(pf.metrics.Metric):
    """Accuracy of one field, logged as ``<field>_acc``: which fields are hard?"""

    def __init__(self, field: str) -> None:
        super().__init__(name=f"{field}_acc")
        self.field = field
        self.correct = 0
        self.count = 0

    def update_state(self, y_true: Any, y_pred: Any, reward: float) -> None:
        self.count += 1
        if y_pred is not None:
            predicted = y_pred.model_dump(mode="json").get(self.field)
            self.correct += same(self.field, y_true[self.field], predicted)

    def result(self) -> float:
        return self.correct / self.count if self.count else 0.0

    def reset_state(self) -> None:
        self.correct = self.count = 0

    def state_dict(self) -> dict[str, Any]:
        return {"correct": self.correct, "count": self.count}

    def get_config(self) -> dict[str, Any]:
        return {"field": self.field}


async def main() -> None:
    cli(__doc__)
    print("Backend:", describe_backend())
    x = [{"text": text} for text, _ in EMAILS]
    y = [record for _, record in EMAILS]
    x_train, y_train, x_val, y_val = x[:5], y[:5], x[5:], y[5:]

    lm = language_model("echo", max_tokens=256)
    inputs = pf.Input(data_model=Email)
    outputs = await pf.Generator(
        data_model=Invoice,
        language_model=lm,
        instructions="Extract the invoice described in the email. Use ISO dates.",
        name="extractor",
    )(inputs)
    program = pf.Program(inputs=inputs, outputs=outputs, name="invoice_extractor")
    program.compile(
        reward=field_reward,
        # use_labels=True lets the labelled pairs serve as demonstrations from the start.
        optimizer=pf.optimizers.RandomFewShot(k=2, min_reward=0.99),
        metrics=[FieldAccuracy(field) for field in FIELDS],
    )

    section("One extraction")
    invoice = await program(Email(text=EMAILS[0][0]))
    print(repr(invoice))

    section("Before training (validation)")
    before = await program.evaluate(x_val, y_val, verbose=0)
    print({k: round(v, 2) for k, v in before.items() if k == "reward" or k.endswith("_acc")})

    section("Training")
    await program.fit(
        x_train,
        y_train,
        epochs=2,
        batch_size=5,
        validation_data=(x_val, y_val),
        callbacks=[pf.callbacks.CSVLogger(output_dir() / "history.csv")],
        seed=0,
        verbose=2,
    )

    section("After training (validation)")
    after = await program.evaluate(x_val, y_val, verbose=0)
    print({k: round(v, 2) for k, v in after.items() if k == "reward" or k.endswith("_acc")})
    for email, prediction in zip(x_val, await program.predict(x_val, verbose=0), strict=True):
        print(f"- {email['text'][:60]}...")
        print(f"  -> {prediction.model_dump(mode='json') if prediction else None}")
    path = program.save(output_dir() / "invoice_extractor.json")
    print("saved:", path)


if __name__ == "__main__":
    asyncio.run(main())
