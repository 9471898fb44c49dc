"""Word and character error rates (jiwer) on text normalised the same way for reference and hypothesis, right in
every script: NFKC, lower case, punctuation and symbols out, combining marks kept inside their word (Devanagari
vowel signs are marks, not word breaks; Arabic harakat, optional in writing, are removed), plus the per-language
rules of `RULES`. Numbers are never
rewritten (a "3" and a "three" differ)."""

from __future__ import annotations

import re
import unicodedata

from higgs_train.language import SPACELESS, headline_metric

TATWEEL = "\u0640"
HARAKAT = re.compile("[\u064b-\u065f\u0670\u06d6-\u06ed]")  # tanwin, short vowels, shadda, sukun, Quranic marks
_ALEF = str.maketrans({"\u0623": "\u0627", "\u0625": "\u0627", "\u0622": "\u0627", "\u0671": "\u0627"})
_HAMZA_CARRIERS = str.maketrans({"\u0624": "\u0648", "\u0626": "\u064a", "\u0649": "\u064a"})  # ؤ->و ئ->ي ى->ي
_PERSIAN = str.maketrans({"\u064a": "\u06cc", "\u0649": "\u06cc", "\u0643": "\u06a9"})  # Arabic yeh/kaf -> Persian
NUKTA = "\u093c"

# What each language's rule does beyond the common steps (README: "Train a new language" lists the same).
RULES = {
    "any": "NFKC; lower case; punctuation, symbols and invisible marks out; Arabic-script tatweel and harakat out",
    "ar": "alef forms (أ إ آ ٱ) -> ا; hamza carriers ؤ -> و, ئ and alef maksura ى -> ي",
    "fa, ur": "Arabic yeh (ي ى) -> Persian yeh ی; Arabic kaf ك -> keheh ک",
    "hi": "nukta removed (क़ -> क, ज़ -> ज): written inconsistently, never a different word to a listener",
    "zh, ja, th, lo, km, my": "spaces removed; CER is the headline error (no word boundaries in the script)",
}


def normalise(text: str, language: str | None = None) -> str:
    """The text as scoring compares it: so "Hello, world!" and "hello world" are equal, and so are مَرْحَبًا and مرحبا
    in Arabic; combining marks stay in their word."""
    text = unicodedata.normalize("NFKC", text).replace("\u2019", "'").lower()
    text = HARAKAT.sub("", text.replace(TATWEEL, ""))  # in any language: both are optional in Arabic script
    if language == "ar":
        text = text.translate(_ALEF).translate(_HAMZA_CARRIERS)
    elif language in ("fa", "ur"):
        text = text.translate(_PERSIAN)
    elif language == "hi":
        text = unicodedata.normalize("NFD", text).replace(NUKTA, "")
        text = unicodedata.normalize("NFC", text)
    out = []
    for ch in text:
        kind = unicodedata.category(ch)[0]
        if kind in "LMN" or ch == "'":
            out.append(ch)
        elif kind == "C":  # zero-width joiners, bidi marks: invisible, never a word break
            continue
        else:
            out.append(" ")
    text = re.sub(r"\s+", " ", "".join(out)).strip()
    return text.replace(" ", "") if language in SPACELESS else text


def error_rates(reference: str, hypothesis: str, language: str | None = None) -> tuple[float | None, float, str]:
    """(WER, CER, headline metric) of `hypothesis` against `reference`, both normalised for `language`.

    WER is None for scripts written without spaces (their headline is CER). An empty hypothesis scores 1.0.

    Raises:
        ValueError: the reference is empty after normalisation.
    """
    import jiwer

    metric = headline_metric(language)
    ref, hyp = normalise(reference, language), normalise(hypothesis, language)
    if not ref:
        raise ValueError("the reference text is empty after normalisation")
    if not hyp:
        return (None if metric == "cer" else 1.0), 1.0, metric
    wer = None if metric == "cer" else float(jiwer.wer(ref, hyp))
    return wer, float(jiwer.cer(ref, hyp)), metric
