"""The official VQAv2 accuracy metric, reimplemented without the VQA API classes.

This reproduces the scoring of the VQA challenge's ``vqaEval.py``
(GT-Vision-Lab/VQA, ``PythonEvaluationTools/vqaEvaluation/vqaEval.py``, the
Python 3 version on ``master``) answer for answer, including its quirks:

* **Whitespace.** ``\\n`` and ``\\t`` become spaces and the ends are stripped, in
  the prediction and in every ground-truth answer, before anything else.
* **The all-identical quirk.** Punctuation and digit/article/contraction
  normalisation are applied to the ground-truth answers *and to the prediction*
  only when the ground-truth answers are not all identical
  (``len(set(answers)) > 1``, compared after the whitespace step). When the
  annotators all agree, the prediction must equal their answer exactly: with ten
  ``"yes"`` answers, ``"Yes"`` and ``"yes."`` score 0, and with ten ``"2"``
  answers, ``"two"`` scores 0.
* **Punctuation.** Each character of :data:`PUNCTUATION` is deleted when it
  touches a space somewhere in the text (``"p "`` or ``" p"``) or when the text
  contains a comma between two digits anywhere (``"1,000"``); otherwise it is
  replaced by a space. The decision is made per character over the whole text, so
  ``"left /right up/down"`` becomes ``"left right updown"``. Periods are handled
  apart: every period not followed by a digit is deleted (``"3.5"`` stays), but
  at most 32 of them, because the official code passes ``re.UNICODE`` (= 32) as
  the ``count`` argument of ``re.sub``. Apostrophes, colons, periods before
  digits, ``* # $ % & ~ ^ |`` and other characters are kept.
* **Digits, articles, contractions.** The text is lower-cased and split on
  whitespace; number words ``"none"``/``"zero"`` ... ``"ten"`` become digits,
  the articles ``a``/``an``/``the`` are dropped, and apostrophe-less
  contractions get their apostrophe back (``"dont"`` -> ``"don't"``); the words
  are joined with single spaces. Table keys with capitals (``"Im"``, ``"Ive"``)
  can never match after lower-casing, and ``"somebody'd"`` maps to
  ``"somebodyd"``; both are kept as in the official table.
* **Leave-one-out.** For each ground-truth answer in turn, the prediction scores
  ``min(1, matches among the *other* answers / 3)``; the question's accuracy is
  the mean of these. With ten answers and ``k`` matches that is 0, 0.3, 0.6, 0.9
  and 1.0 for ``k`` = 0, 1, 2, 3, >= 4. A question with a single ground-truth
  answer always scores 0 (nothing is left to match). The official code removes
  the left-out answer by comparing annotation dicts, which carry a unique
  ``answer_id``, so exactly one answer is left out each time; here answers are
  plain strings and are left out by position, which is the same thing.

The official code reports percentages rounded to two decimals; this module keeps
unrounded fractions in [0, 1]. Per-question scores are bit-for-bit those of the
official code (same operations in the same order).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from searchskip.errors import DataError

__all__ = [
    "ARTICLES",
    "CONVENTIONS",
    "CONTRACTIONS",
    "NUMBER_WORDS",
    "PUNCTUATION",
    "VQAScore",
    "normalize_answer",
    "question_accuracy",
    "score",
    "score_accuracies",
]

CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've",
    "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's",
    "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've",
    "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're",
    "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've",
    "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd",
    "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll", "whos": "who's",
    "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all",
    "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}
"""Apostrophe-less contraction -> contraction (the official ``contractions`` table, as is)."""

NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
"""Number word -> digits (the official ``manualMap``; note ``"none"`` -> ``"0"``)."""

ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})
"""Words dropped from answers (the official ``articles``)."""

PUNCTUATION: tuple[str, ...] = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
    ">", "<", "@", "`", ",", "?", "!",
)
"""Characters removed or turned into spaces (the official ``punct``; periods are handled apart)."""

# The official pattern, kept verbatim. "(?!<=\d)" looks like a lookbehind but is a
# negative *lookahead* for the literal "<=" plus a digit, which can never match at a
# period, so the pattern means "a period not followed by a digit".
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(\,)(\d)")
_MAX_PERIODS_STRIPPED = int(re.UNICODE)
"""The official code calls ``sub("", text, re.UNICODE)``: the flag lands in ``count`` (32)."""


def _clean_whitespace(text: str) -> str:
    """Turn newlines and tabs into spaces and strip the ends (applied to every answer)."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def _process_punctuation(text: str) -> str:
    """The official ``processPunctuation``: delete or space out punctuation, then strip periods."""
    delete_all = _COMMA_BETWEEN_DIGITS.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        # Tests look at the original text, not at the partly processed one.
        if delete_all or (mark + " ") in text or (" " + mark) in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_STRIP.sub("", out, count=_MAX_PERIODS_STRIPPED)


def _process_digit_article(text: str) -> str:
    """The official ``processDigitArticle``: lower-case, number words to digits, drop articles, contractions."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in ARTICLES]
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


def _normalize_clean(text: str) -> str:
    """Punctuation then digit/article/contraction normalisation of whitespace-cleaned text."""
    return _process_digit_article(_process_punctuation(text))


def normalize_answer(text: str) -> str:
    """Normalise one answer exactly as the official VQA evaluation does when it normalises.

    Steps: newlines/tabs to spaces and strip; punctuation (see the module docstring
    for the space-adjacency and comma-between-digits rules, and the 32-period cap);
    then lower-case, number words to digits, articles dropped, contractions
    restored, words joined by single spaces.

    Note that :func:`question_accuracy` applies this only when the ground-truth
    answers are not all identical, as the official code does.

    >>> normalize_answer("Two dogs.")
    '2 dogs'
    >>> normalize_answer("1,000")
    '1000'
    """
    return _normalize_clean(_clean_whitespace(text))


def _check_answers(answers: Sequence[str]) -> None:
    """Reject a bare string (a common slip for a list of answers) and an empty answer list."""
    if isinstance(answers, str):
        raise DataError(
            f"answers must be a sequence of ground-truth strings, got the single string {answers!r}"
        )
    if len(answers) == 0:
        raise DataError("a question needs at least one ground-truth answer to be scored, got none")


CONVENTIONS = ("official", "lmms-eval")
"""``official``: the VQA challenge's ``vqaEval.py`` (the module doc); ``lmms-eval``: lmms-eval's VQAv2
metric (``tasks/vqav2/utils.py``), which normalises the prediction and the answers always, also
when the answers are all identical."""


def question_accuracy(prediction: str, answers: Sequence[str], convention: str = "official") -> float:
    """The official VQA accuracy of one prediction against its ground-truth answers, in [0, 1].

    For each ground-truth answer left out in turn, the prediction earns
    ``min(1, matches among the remaining answers / 3)``; the result is the mean
    over the left-out answers (0.3, 0.6, 0.9, 1.0 for 1, 2, 3, 4+ matches out of
    ten). Answers are compared after :func:`normalize_answer`, **except** when
    the ground-truth answers are all identical (after turning newlines/tabs into
    spaces and stripping): then, like the official code, neither the answers nor
    the prediction are normalised, so the prediction must match exactly,
    case and punctuation included (``convention="lmms-eval"``: normalised then
    too, as lmms-eval's VQAv2 metric does). A single ground-truth answer always
    gives 0.

    Raises:
        ValueError: (a :class:`~searchskip.errors.DataError`) if ``answers`` is
            empty or is a single string.
    """
    _check_answers(answers)
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {', '.join(CONVENTIONS)}, but got {convention!r}")
    pred = _clean_whitespace(prediction)
    gts = [_clean_whitespace(answer) for answer in answers]
    if len(set(gts)) > 1 or convention == "lmms-eval":
        gts = [_normalize_clean(answer) for answer in gts]
        pred = _normalize_clean(pred)
    matches = [gt == pred for gt in gts]
    total_matches = sum(matches)
    per_left_out = [min(1, (total_matches - left_out_matches) / 3) for left_out_matches in matches]
    return float(sum(per_left_out)) / len(per_left_out)


@dataclass
class VQAScore:
    """VQA accuracy of a set of predictions: overall and broken down by question and answer type.

    All accuracies are unrounded fractions in [0, 1] (the official code prints
    percentages rounded to two decimals). The type breakdowns are empty when the
    types were not given, and keep the order in which types first appear.
    """

    accuracy: float
    """Mean per-question accuracy over all questions."""
    n: int
    """Number of questions scored."""
    per_question_type: dict[str, float] = field(default_factory=dict)
    """Mean accuracy of the questions of each question type (e.g. ``"what color is the"``)."""
    per_answer_type: dict[str, float] = field(default_factory=dict)
    """Mean accuracy of the questions of each answer type (``"yes/no"``, ``"number"``, ``"other"``)."""
    counts_per_question_type: dict[str, int] = field(default_factory=dict)
    """Number of questions of each question type."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data: ``accuracy``, ``n``, ``per_question_type``, ``per_answer_type``."""
        return {
            "accuracy": float(self.accuracy),
            "n": int(self.n),
            "per_question_type": {str(k): float(v) for k, v in self.per_question_type.items()},
            "per_answer_type": {str(k): float(v) for k, v in self.per_answer_type.items()},
        }


def _group_means(accuracies: Sequence[float], groups: Sequence[str]) -> tuple[dict[str, float], dict[str, int]]:
    """Mean accuracy and count per group label, in order of first appearance."""
    members: dict[str, list[float]] = {}
    for accuracy, group in zip(accuracies, groups):
        members.setdefault(group, []).append(accuracy)
    means = {group: float(sum(values)) / len(values) for group, values in members.items()}
    counts = {group: len(values) for group, values in members.items()}
    return means, counts


def _check_aligned(caller: str, n: int, what: str, lengths: dict[str, int | None]) -> None:
    """Raise if a sequence of ``lengths`` (``None``: not given) is not ``n`` long, or if ``n`` is 0."""
    wrong = {name: length for name, length in lengths.items() if length is not None and length != n}
    if wrong:
        detail = ", ".join(f"{name} has {length}" for name, length in wrong.items())
        raise DataError(f"{caller} needs aligned sequences: {n} {what} but {detail}")
    if n == 0:
        raise DataError(f"{caller} got no questions to score")


def _summarize(
    accuracies: Sequence[float],
    question_types: Sequence[str] | None,
    answer_types: Sequence[str] | None,
) -> VQAScore:
    """The :class:`VQAScore` of aligned, checked per-question accuracies (plain means)."""
    n = len(accuracies)
    result = VQAScore(accuracy=float(sum(accuracies)) / n, n=n)
    if question_types is not None:
        result.per_question_type, result.counts_per_question_type = _group_means(accuracies, question_types)
    if answer_types is not None:
        result.per_answer_type, _ = _group_means(accuracies, answer_types)
    return result


def _lengths(question_types: Sequence[str] | None, answer_types: Sequence[str] | None) -> dict[str, int | None]:
    return {"question_types": None if question_types is None else len(question_types),
            "answer_types": None if answer_types is None else len(answer_types)}


def score(
    predictions: Sequence[str],
    answers: Sequence[Sequence[str]],
    question_types: Sequence[str] | None = None,
    answer_types: Sequence[str] | None = None,
    convention: str = "official",
) -> VQAScore:
    """Score aligned predictions against their ground-truth answers with the official VQA accuracy
    (``convention``: see :data:`CONVENTIONS`).

    ``predictions[i]`` answers the question whose ground-truth answers are
    ``answers[i]`` (and whose types, when given, are ``question_types[i]`` and
    ``answer_types[i]``). Each question is scored with :func:`question_accuracy`;
    the overall accuracy and each per-type accuracy are plain means over
    questions, as in the official code, but kept as unrounded fractions in
    [0, 1] instead of the official percentages rounded to two decimals.

    Raises:
        ValueError: (a :class:`~searchskip.errors.DataError`) if the sequences
            differ in length, if there are no questions, or if a question has no
            ground-truth answer.
    """
    _check_aligned("score()", len(predictions), "predictions",
                   {"answers": len(answers), **_lengths(question_types, answer_types)})
    accuracies = []
    for index, (prediction, gts) in enumerate(zip(predictions, answers)):
        try:
            accuracies.append(question_accuracy(prediction, gts, convention))
        except DataError as error:
            raise DataError(f"question {index}: {error}") from None
    return _summarize(accuracies, question_types, answer_types)


def score_accuracies(
    accuracies: Sequence[float],
    question_types: Sequence[str] | None = None,
    answer_types: Sequence[str] | None = None,
) -> VQAScore:
    """The :class:`VQAScore` of per-question accuracies already computed with :func:`question_accuracy`.

    ``score_accuracies([question_accuracy(p, a) for p, a in zip(predictions, answers)], qt, at)``
    equals ``score(predictions, answers, qt, at)``; a caller that needed each question's accuracy
    anyway (a running mean) need not score the answers twice.

    Raises:
        ValueError: (a :class:`~searchskip.errors.DataError`) if the type sequences
            differ in length from ``accuracies``, or if there are no questions.
    """
    _check_aligned("score_accuracies()", len(accuracies), "accuracies", _lengths(question_types, answer_types))
    return _summarize(list(accuracies), question_types, answer_types)
