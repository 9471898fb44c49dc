"""Scoring's text rules in every script: one test per rule of README's "Train a new language" table, and the
two properties that must hold everywhere (a text against itself is 0; one wrong word of four is 0.25)."""

import pytest

from higgs_train.scoring.text import error_rates, normalise

# (language, a sentence of four words, the same with one word wrong)
FOUR_WORDS = [
    ("en", "The cat sat down.", "The cat sat up."),
    ("ar", "مَرْحَبًا بِكُمْ فِي البَيْتِ", "مرحبا بكم في المدرسة"),
    ("hi", "नमस्ते आप कैसे हैं", "नमस्ते आप कैसी हैं"),
    ("vi", "Xin chào các bạn", "Xin chao các bạn"),
    ("fa", "من به خانه رفتم", "من به مدرسه رفتم"),
    ("ru", "Я иду домой сейчас", "Я иду домой завтра"),
    ("el", "Καλημέρα σας φίλοι μου", "Καλησπέρα σας φίλοι μου"),
    ("he", "שלום לכם חברים יקרים", "שלום לכם חברים טובים"),
    ("ko", "저는 집에 갑니다 지금", "저는 학교에 갑니다 지금"),
    ("bn", "আমি বাড়ি যাচ্ছি এখন", "আমি স্কুলে যাচ্ছি এখন"),
    ("ta", "நான் வீட்டுக்கு போகிறேன் இப்போது", "நான் பள்ளிக்கு போகிறேன் இப்போது"),
    ("ur", "میں گھر جا رہا", "میں اسکول جا رہا"),
]
SPACELESS = [("zh", "你好世界", "你好世介"), ("ja", "こんにちは", "こんにちわ"), ("th", "สวัสดีครับ", "สวัสดีคลับ")]


@pytest.mark.parametrize("language,text,wrong", FOUR_WORDS)
def test_wer_is_zero_against_itself_and_a_quarter_for_one_wrong_word_of_four(language, text, wrong):
    assert len(normalise(text, language).split()) == 4  # combining marks stay inside their word
    assert error_rates(text, text, language) == (0.0, 0.0, "wer")
    wer, cer, metric = error_rates(text, wrong, language)
    assert (wer, metric) == (0.25, "wer") and 0 < cer < 0.5


@pytest.mark.parametrize("language,text,wrong", SPACELESS)
def test_scripts_without_spaces_score_characters(language, text, wrong):
    assert error_rates(text, text, language) == (None, 0.0, "cer")
    assert error_rates(f"{text}。", " ".join(text), language) == (None, 0.0, "cer")  # spaces and punctuation out
    wer, cer, metric = error_rates(text, wrong, language)
    assert wer is None and metric == "cer" and cer == pytest.approx(1 / len(text))


def test_combining_marks_stay_in_their_word():
    # The old normaliser split at every mark: 4 Arabic words became 13, Hindi lost its vowel signs.
    assert normalise("नमस्ते आप कैसे हैं", "hi").split() == ["नमस्ते", "आप", "कैसे", "हैं"]
    assert normalise("नमस्ते आप कैसे हैं", "hi") != normalise("नमस्ते आप कैसी हैं", "hi")
    assert normalise("Tiếng Việt", "vi") == "tiếng việt"


def test_arabic_harakat_and_tatweel_are_removed_in_any_language():
    assert normalise("مَرْحَبًا بِكُمْ", "ar") == "مرحبا بكم"
    assert normalise("مَرْحَبًا بِكُمْ") == "مرحبا بكم"  # no language given: still Arabic script's own rule
    assert normalise("مرحـــبا", "ar") == "مرحبا"
    assert normalise("كِتَابٌ", "fa") == "کتاب"


def test_arabic_alef_and_hamza_forms_are_unified():
    assert normalise("أحمد إلى آخر ٱلكتاب", "ar") == "احمد الي اخر الكتاب"
    assert normalise("مسؤول", "ar") == normalise("مسوول", "ar")
    assert normalise("رئيس", "ar") == normalise("رييس", "ar")
    assert normalise("على", "ar") == normalise("علي", "ar")  # alef maksura
    assert normalise("أحمد", "fa") != normalise("احمد", "fa")  # an Arabic rule, not a Persian one


def test_persian_and_urdu_yeh_and_kaf_forms():
    for language in ("fa", "ur"):
        assert normalise("كتابي", language) == normalise("کتابی", language) == "کتابی"
    assert normalise("كتابي", "ar") == "كتابي"  # Arabic keeps its own letters


def test_hindi_nukta_is_removed_precomposed_or_not():
    assert normalise("ज़रूर", "hi") == normalise("जरूर", "hi") == normalise("\u095bरूर", "hi")
    assert normalise("क़लम", "hi") == "कलम"
    assert normalise("\u0929", "hi") == "\u0928"  # ऩ composes canonically: NFKC alone keeps it


def test_numbers_are_never_rewritten():
    assert error_rates("I have 3 cats", "I have three cats")[0] == 0.25
    assert normalise("٣ كتب", "ar") == "٣ كتب"  # Arabic-Indic digits stay digits of their own


def test_punctuation_quotes_and_invisible_marks():
    assert normalise("Don’t stop, «please»!") == "don't stop please"
    assert normalise("می\u200cخواهم", "fa") == "میخواهم"  # zero-width non-joiner: never a word break
    assert normalise("ＡＢＣ　１２３") == "abc 123"  # NFKC: full-width forms


def test_an_empty_hypothesis_and_reference():
    assert error_rates("some words", "") == (1.0, 1.0, "wer")
    assert error_rates("你好", "", "zh") == (None, 1.0, "cer")
    with pytest.raises(ValueError, match="the reference text is empty after normalisation"):
        error_rates("?!", "words")
