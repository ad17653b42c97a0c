"""Tests of the official VQAv2 accuracy (searchskip.eval.vqa_accuracy).

Every expected value below is derived by hand from the rules of the official
``vqaEval.py`` (GT-Vision-Lab/VQA); the derivation is in the comments.
"""

from __future__ import annotations

import json

import pytest

from searchskip.errors import DataError
from searchskip.eval.vqa_accuracy import VQAScore, normalize_answer, question_accuracy, score, score_accuracies

def ten(answer: str, k: int, filler: str = "filler") -> list[str]:
    """Ten ground-truth answers, ``k`` of them equal to ``answer``, the rest ``filler``.

    With 0 < k < 10 the answers are not all identical, so the official code
    normalises answers and prediction.
    """
    return [answer] * k + [filler] * (10 - k)


# --------------------------------------------------------------------------- #
# normalize_answer: one behaviour per case
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # case: everything is lower-cased
        ("YES", "yes"),
        # number words become digits, inside phrases too; "none" counts as zero
        ("two", "2"),
        ("Two Dogs", "2 dogs"),
        ("none", "0"),
        ("ten", "10"),
        # only zero..ten are mapped
        ("eleven", "eleven"),
        # articles a / an / the are dropped wherever they are
        ("a dog", "dog"),
        ("an apple", "apple"),
        ("The Cat on the mat", "cat on mat"),
        # contractions get their apostrophe back
        ("dont", "don't"),
        ("isnt", "isn't"),
        ("Wont", "won't"),
        # table keys with capitals ("Im") never match after lower-casing
        ("Im", "im"),
        # the official table maps "somebody'd" the wrong way round
        ("somebody'd", "somebodyd"),
        # apostrophes and colons are not punctuation
        ("dog's", "dog's"),
        ("3:30", "3:30"),
        # a period not followed by a digit is removed; before a digit it stays
        ("yes.", "yes"),
        ("u.s.a.", "usa"),
        ("3.5", "3.5"),
        (".5", ".5"),
        ("5.", "5"),
        # punctuation not touching a space becomes a space
        ("left/right", "left right"),
        ("t-shirt", "t shirt"),
        ("wow!", "wow"),
        ("yes?", "yes"),
        # punctuation touching a space is deleted (the space remains)
        ("red, blue", "red blue"),
        # a comma between digits deletes the comma ...
        ("1,000", "1000"),
        # ... and every other punctuation mark of the text, which would otherwise
        # become a space: "cars/trucks" -> "carstrucks"
        ("1,000 cars/trucks", "1000 carstrucks"),
        # the space-adjacency test is per mark over the whole text: " /" occurs
        # once, so every "/" is deleted, "up/down" included
        ("left /right up/down", "left right updown"),
        # ... but only for that mark: "-" touches no space, so it becomes a space
        ("left /right up-down", "left right up down"),
        # the adjacency test looks at the original text: ";" -> " " makes " /",
        # but "/" touched no space originally, so "/" also becomes a space
        # (testing the partly processed text would give "x y uv")
        ("x;/y u/v", "x y u v"),
        # newlines and tabs are spaces
        ("yes\tno", "yes no"),
        # and count as spaces for the adjacency test: "\n/" is " /" so every "/"
        # is deleted ("a/b" -> "ab"), where a raw newline would give "a b"
        ("x\n/y a/b", "x y ab"),
        # leading/trailing whitespace is stripped before the adjacency test:
        # " ?yes x?y" contains " ?" (every "?" deleted: "yes xy"), but the
        # stripped "?yes x?y" does not, so every "?" becomes a space
        (" ?yes x?y", "yes x y"),
        # characters outside the official lists are kept
        ("50%", "50%"),
        # words are re-joined with single spaces
        ("  big   red  ", "big red"),
    ],
)
def test_normalize_answer_official_rules(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


def test_period_strip_stops_after_32_periods() -> None:
    # The official code calls periodStrip.sub("", text, re.UNICODE): the flag
    # (value 32) is taken as the count, so 40 periods lose only 32 of them.
    assert normalize_answer("." * 40) == "." * 8
    assert normalize_answer("." * 32) == ""


# --------------------------------------------------------------------------- #
# question_accuracy: leave-one-out arithmetic
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("k", "expected"),
    [
        # k = 0: no left-out answer leaves a match -> 0.
        (0, 0.0),
        # k = 1: the 9 left-out non-matches each leave 1 match -> min(1, 1/3) = 1/3;
        #        the left-out match leaves 0 -> 0.  (9 * 1/3 + 0) / 10 = 3/10.
        (1, 0.3),
        # k = 2: 8 non-matches leave 2 -> 2/3 each; 2 matches leave 1 -> 1/3 each.
        #        (8 * 2/3 + 2 * 1/3) / 10 = (16/3 + 2/3) / 10 = 6/10.
        (2, 0.6),
        # k = 3: 7 non-matches leave 3 -> 1 each; 3 matches leave 2 -> 2/3 each.
        #        (7 + 3 * 2/3) / 10 = 9/10.
        (3, 0.9),
        # k = 4: 6 non-matches leave 4 -> min(1, 4/3) = 1; 4 matches leave 3 -> 1.
        #        (6 + 4) / 10 = 1.
        (4, 1.0),
        # k = 10: every left-out answer leaves 9 matches -> 1.
        (10, 1.0),
    ],
)
def test_leave_one_out_partial_credit(k: int, expected: float) -> None:
    assert question_accuracy("cat", ten("cat", k)) == pytest.approx(expected, abs=1e-12)


def test_three_answers_two_matches() -> None:
    # answers [cat, cat, dog], prediction cat (k = 2 of 3):
    #   leave out cat -> 1 other match -> 1/3 (twice); leave out dog -> 2 -> 2/3.
    #   (1/3 + 1/3 + 2/3) / 3 = 4/9.
    assert question_accuracy("cat", ["cat", "cat", "dog"]) == pytest.approx(4 / 9, abs=1e-12)


def test_single_answer_always_scores_zero() -> None:
    # Leaving out the only answer leaves nothing to match: min(1, 0/3) = 0.
    assert question_accuracy("cat", ["cat"]) == 0.0


def test_matching_uses_normalisation_when_answers_differ() -> None:
    # answers are normalised too: "Two" and "2" are both "2", "the dog" is "dog".
    # "2" matches 4 of 10 -> 1.0 (see k = 4 above).
    answers = ["Two", "2", "two", "2.", "3", "3", "3", "3", "3", "3"]
    assert question_accuracy("two", answers) == 1.0
    # "A Dog!" -> "dog" matches the 3 normalised "dog" answers -> 0.9 (k = 3).
    assert question_accuracy("A Dog!", ten("the dog", 3, "cat")) == pytest.approx(0.9, abs=1e-12)


def test_prediction_must_match_whole_answer() -> None:
    # "black and white" is not "white": no partial string matching.
    assert question_accuracy("white", ten("black and white", 5)) == 0.0


# --------------------------------------------------------------------------- #
# The all-identical quirk
# --------------------------------------------------------------------------- #


def test_all_identical_answers_skip_normalisation_of_prediction() -> None:
    # Ten identical "yes": len(set(answers)) == 1, so nothing is normalised and
    # "Yes" (case), "yes." (period) and "a yes" (article) no longer match.
    assert question_accuracy("Yes", ["yes"] * 10) == 0.0
    assert question_accuracy("yes.", ["yes"] * 10) == 0.0
    assert question_accuracy("yes", ["yes"] * 10) == 1.0


def test_all_identical_number_answers_do_not_map_words() -> None:
    # Ten identical "2": "two" is not mapped to "2" -> 0.
    assert question_accuracy("two", ["2"] * 10) == 0.0


def test_same_prediction_scores_when_answers_disagree() -> None:
    # Contrast with the quirk: one dissenting "no" turns normalisation on, and
    # "Yes" -> "yes" matches 9 of 10 -> 1.0.
    assert question_accuracy("Yes", ["yes"] * 9 + ["no"]) == 1.0
    assert question_accuracy("two", ["2"] * 9 + ["3"]) == 1.0


def test_identical_gt_with_capitals_needs_exact_prediction() -> None:
    # All "Yes": the lower-case prediction fails, the exact one passes.
    assert question_accuracy("yes", ["Yes"] * 10) == 0.0
    assert question_accuracy("Yes", ["Yes"] * 10) == 1.0


def test_whitespace_is_cleaned_before_the_identity_test() -> None:
    # "yes " and "yes\n" strip to "yes": the answers count as identical, so the
    # prediction is not lower-cased ("YES" -> 0), though it is stripped ("\tyes\n" -> 1).
    answers = ["yes ", "yes\n"] * 5
    assert question_accuracy("YES", answers) == 0.0
    assert question_accuracy("\tyes\n", answers) == 1.0


# --------------------------------------------------------------------------- #
# Errors
# --------------------------------------------------------------------------- #


def test_no_answers_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one ground-truth answer"):
        question_accuracy("yes", [])


def test_single_string_answers_is_an_error() -> None:
    # A bare string would otherwise be scored character by character.
    with pytest.raises(DataError, match="single string"):
        question_accuracy("yes", "yes")


def test_score_length_mismatch_answers() -> None:
    with pytest.raises(ValueError, match="2 predictions but answers has 1"):
        score(["yes", "no"], [["yes"] * 10])


def test_score_length_mismatch_types() -> None:
    answers = [["yes"] * 10, ["no"] * 10]
    with pytest.raises(ValueError, match="question_types has 1"):
        score(["yes", "no"], answers, question_types=["is the"])
    with pytest.raises(ValueError, match="answer_types has 3"):
        score(["yes", "no"], answers, answer_types=["yes/no"] * 3)


def test_score_empty_is_an_error() -> None:
    with pytest.raises(ValueError, match="no questions"):
        score([], [])


def test_score_names_the_question_without_answers() -> None:
    with pytest.raises(ValueError, match="question 1"):
        score(["yes", "no"], [["yes"] * 10, []])


# --------------------------------------------------------------------------- #
# score: aggregation
# --------------------------------------------------------------------------- #

PREDICTIONS = ["yes", "2", "red", "no"]
ANSWERS = [
    ["yes"] * 10,  # exact match -> 1.0
    ten("2", 2, "3"),  # k = 2 -> 0.6
    ten("red", 1, "blue"),  # k = 1 -> 0.3
    ["yes"] * 10,  # no match -> 0.0
]
QUESTION_TYPES = ["is the", "how many", "what color is the", "is the"]
ANSWER_TYPES = ["yes/no", "number", "other", "yes/no"]


def test_score_overall_is_plain_mean() -> None:
    result = score(PREDICTIONS, ANSWERS)
    # (1.0 + 0.6 + 0.3 + 0.0) / 4 = 1.9 / 4 = 0.475 (a fraction, not 47.5)
    assert result.accuracy == pytest.approx(0.475, abs=1e-12)
    assert result.n == 4


def test_score_without_types_has_empty_breakdowns() -> None:
    result = score(PREDICTIONS, ANSWERS)
    assert result.per_question_type == {}
    assert result.per_answer_type == {}
    assert result.counts_per_question_type == {}


def test_score_per_question_type() -> None:
    result = score(PREDICTIONS, ANSWERS, question_types=QUESTION_TYPES)
    # "is the": questions 0 and 3 -> (1.0 + 0.0) / 2 = 0.5
    assert result.per_question_type == pytest.approx(
        {"is the": 0.5, "how many": 0.6, "what color is the": 0.3}, abs=1e-12
    )
    assert result.counts_per_question_type == {"is the": 2, "how many": 1, "what color is the": 1}
    # types keep the order of first appearance
    assert list(result.per_question_type) == ["is the", "how many", "what color is the"]


def test_score_per_answer_type() -> None:
    result = score(PREDICTIONS, ANSWERS, answer_types=ANSWER_TYPES)
    # "yes/no": questions 0 and 3 -> 0.5; "number": 0.6; "other": 0.3
    assert result.per_answer_type == pytest.approx({"yes/no": 0.5, "number": 0.6, "other": 0.3}, abs=1e-12)


def test_per_type_means_are_over_questions_not_pooled() -> None:
    # Two "number" questions scoring 1.0 and 0.3 and one "other" scoring 0.0:
    # the "number" mean is (1.0 + 0.3) / 2 = 0.65; overall is 1.3 / 3.
    result = score(
        ["4", "4", "x"],
        [ten("4", 4, "5"), ten("4", 1, "5"), ten("y", 5, "z")],
        answer_types=["number", "number", "other"],
    )
    assert result.per_answer_type["number"] == pytest.approx(0.65, abs=1e-12)
    assert result.per_answer_type["other"] == 0.0
    assert result.accuracy == pytest.approx(1.3 / 3, abs=1e-12)


def test_to_dict_is_json_with_the_four_keys() -> None:
    result = score(PREDICTIONS, ANSWERS, QUESTION_TYPES, ANSWER_TYPES)
    data = result.to_dict()
    assert set(data) == {"accuracy", "n", "per_question_type", "per_answer_type"}
    round_trip = json.loads(json.dumps(data))
    assert round_trip["n"] == 4
    assert round_trip["accuracy"] == pytest.approx(0.475, abs=1e-12)
    assert round_trip["per_answer_type"]["yes/no"] == pytest.approx(0.5, abs=1e-12)
    assert round_trip["per_question_type"]["how many"] == pytest.approx(0.6, abs=1e-12)


def test_vqascore_fields() -> None:
    result = score(["cat"], [ten("cat", 10)], ["what is"], ["other"])
    assert result == VQAScore(
        accuracy=1.0,
        n=1,
        per_question_type={"what is": 1.0},
        per_answer_type={"other": 1.0},
        counts_per_question_type={"what is": 1},
    )


def test_score_accuracies_equals_score() -> None:
    """Precomputed per-question accuracies give exactly the VQAScore of scoring the predictions."""
    accuracies = [question_accuracy(p, a) for p, a in zip(PREDICTIONS, ANSWERS)]
    assert score_accuracies(accuracies, QUESTION_TYPES, ANSWER_TYPES) == score(
        PREDICTIONS, ANSWERS, QUESTION_TYPES, ANSWER_TYPES)
    assert score_accuracies(accuracies) == score(PREDICTIONS, ANSWERS)


def test_score_accuracies_checks_alignment() -> None:
    with pytest.raises(ValueError, match="2 accuracies but question_types has 1"):
        score_accuracies([1.0, 0.0], question_types=["is the"])
    with pytest.raises(ValueError, match="no questions"):
        score_accuracies([])
