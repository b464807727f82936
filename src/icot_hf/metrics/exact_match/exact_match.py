"""Exact match of answer strings, as an `evaluate` metric module shipped with icot_hf.

`evaluate.load("exact_match")` fetches its script from the Hub; this local module loads
offline with `evaluate.load(<path of this folder>)` and compares answers after the
normalisation the ICoT paper's evaluation uses: text after a '####' marker if present,
commas removed, whitespace collapsed.
"""

import datasets
import evaluate

_DESCRIPTION = "Fraction of predictions equal to their reference after ICoT answer normalisation."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): predicted answers.
    references (list of str): reference answers.
Returns:
    exact_match (float): fraction in [0, 1].
"""


def normalize_answer(text: str) -> str:
    if "####" in text:
        text = text.split("####", 1)[1]
    return " ".join(text.replace(",", "").split())


class ICoTExactMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references):
        if not references:
            return {"exact_match": 0.0}
        hits = sum(normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references))
        return {"exact_match": hits / len(references)}
