"""Languages: the ISO 639-1 codes a run and its rows may name (`--language`, a row's `language` field), and what
follows from a language for judging speech (which error rate is the headline, which ASR models can hear it)."""

from __future__ import annotations

from higgs_train.errors import ConfigError

ISO_639_1 = frozenset(
    """aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy da de dv dz ee el
    en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz ia id ie ig ii ik io is it iu ja
    jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na nb nd
    ne ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm sn so sq sr ss
    st su sv sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu""".split()
)
# Scripts written without spaces between words: a "word" error rate is meaningless there, characters are the unit.
SPACELESS = frozenset({"zh", "ja", "th", "lo", "km", "my"})
RTL = frozenset({"ar", "fa", "ur", "ps", "sd", "ug", "he", "yi", "dv", "ku"})  # written right to left
MULTILINGUAL_ASR = "openai/whisper-large-v3"  # the model named when the chosen one cannot hear the data's language


def headline_metric(language: str | None) -> str:
    """ "cer" for scripts written without spaces, else "wer"."""
    return "cer" if language in SPACELESS else "wer"


def is_code(value: object) -> bool:
    return isinstance(value, str) and value in ISO_639_1


def parse_languages(value: str | None) -> tuple[str, ...]:
    """The codes of --language ("en", or "ar,en" for mixed data); () when not given.

    Raises:
        ConfigError: a code that is not ISO 639-1.
    """
    if not value:
        return ()
    codes = tuple(dict.fromkeys(c.strip().lower() for c in value.split(",") if c.strip()))
    bad = [c for c in codes if c not in ISO_639_1]
    if bad or not codes:
        raise ConfigError(
            f"--language {value!r}: {', '.join(bad) or 'no code'} is not an ISO 639-1 code; give two-letter codes "
            "such as en, ar, hi, vi, zh (comma-separated for mixed data)"
        )
    return codes


def language_problems(value: str | None) -> list[str]:
    """--language's problem, as config.validate lists them (empty: none)."""
    try:
        parse_languages(value)
    except ConfigError as e:
        return [str(e)]
    return []


def asr_refusal(asr_model: str, languages: set[str | None], english_only: bool) -> str | None:
    """Why `asr_model` cannot transcribe speech in `languages` (None: it can). `english_only`: the model hears only
    English (PocketSphinx's bundled model, a Whisper `.en` checkpoint)."""
    other = sorted(code for code in languages if code and code != "en")
    if not english_only or not other:
        return None
    return (
        f"--asr_model {asr_model} transcribes English only, but the data is in {', '.join(other)}; pass a multilingual "
        f"model such as --asr_model {MULTILINGUAL_ASR}"
    )
