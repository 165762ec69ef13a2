"""English inverse text normalization, to the conventions in docs/itn.md.

Whisper already writes digits, so this matters for models that spell numbers out. Numbers
of ten and above, and any number with a currency, percent, unit, time or date, become
digits; one to nine in running text stay words ("two cats", "one of them"). Only spelled
number words are touched, so written text passes through unchanged.
"""

from __future__ import annotations

import re

ONES = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19,
}  # fmt: skip
TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
SCALES = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9}
ORDINALS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8,
    "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13, "fourteenth": 14,
    "fifteenth": 15, "sixteenth": 16, "seventeenth": 17, "eighteenth": 18, "nineteenth": 19, "twentieth": 20,
    "thirtieth": 30, "fortieth": 40, "fiftieth": 50, "sixtieth": 60, "seventieth": 70, "eightieth": 80,
    "ninetieth": 90, "hundredth": 100, "thousandth": 1000,
}  # fmt: skip
MONTHS = "January February March April May June July August September October November December".split()
CURRENCY_BEFORE = {"dollar": "$", "dollars": "$", "bucks": "$", "euro": "€", "euros": "€"}
UNITS = (
    "cents?|pounds?|kilograms?|kilos?|grams?|kilometers?|kilometres?|miles?|meters?|metres?|"
    "centimeters?|centimetres?|millimeters?|millimetres?|feet|foot|inches|inch|degrees?|"
    "liters?|litres?|milliliters?|millilitres?|gallons?|hours?|minutes?|seconds?|years? old|"
    "percent|per cent|o'clock"
)

_WORD = "|".join(sorted([*ONES, *TENS, *SCALES], key=len, reverse=True))
_DIGIT_WORD = "zero|oh|one|two|three|four|five|six|seven|eight|nine"
_PHRASE = rf"(?:{_WORD})(?:(?:\s+|-)(?:and\s+)?(?:{_WORD}))*"
_ORDINAL = "|".join(sorted(ORDINALS, key=len, reverse=True))
_MERIDIEM = r"(?P<mer>[ap])\.?\s?m\b\.?"

_NUMBER = re.compile(
    rf"\b(?P<num>{_PHRASE})(?:\s+point(?P<frac>(?:\s+(?:{_DIGIT_WORD}))+))?\b"
    rf"(?:\s+(?P<cur>dollars?|bucks|euros?)(?:\s+and\s+(?P<cents>{_PHRASE})\s+cents?)?\b"
    rf"|\s+(?P<pct>percent|per cent)\b|\s+{_MERIDIEM}|(?=\s+(?P<unit>{UNITS})\b))?",
    re.IGNORECASE,
)
# The day is the whole run of number words after the month (an atomic group: never a
# shorter run), and a run already followed by a written ordinal ("October one 25th") is
# number soup, not a date. Else a second pass could read "one" as the day where the first
# had seen "one twenty" (not a day) and left it: ITN was not idempotent.
_DATE = re.compile(
    rf"\b(?P<month>{'|'.join(MONTHS)})\s+(?:the\s+)?(?P<day>(?>(?:(?:twenty|thirty)[\s-])?(?:{_ORDINAL})|{_PHRASE}))\b"
    rf"(?!\s+\d+(?:st|nd|rd|th)\b)(?:,?\s+(?P<year>{_PHRASE}))?",
    re.IGNORECASE,
)
_PLURAL_NUMBER = re.compile(r"\s+(?:\w+ties|hundreds|thousands|millions|billions)\b", re.IGNORECASE)
_YEAR = re.compile(rf"\b(?P<prep>in|since|by|until|from|before|after)\s+(?P<year>{_PHRASE})\b", re.IGNORECASE)
_ORDINAL_RE = re.compile(rf"\b(?:(?P<tens>{'|'.join(TENS)})[\s-])?(?P<ord>{_ORDINAL})\b", re.IGNORECASE)


def parse_cardinal(phrase: str) -> int | None:
    """The value of spelled-out number words, or None when they are not one number
    ("one two three" is a digit sequence, "five twenty" a time or a price: left alone)."""
    words = [w for w in re.split(r"[\s-]+", phrase.lower()) if w and w != "and"]
    if not words:
        return None
    total, current, last, last_scale = 0, 0, "", 10**12
    for word in words:
        if word in ONES:
            if last in ONES or (last in TENS and ONES[word] >= 10) or (last in TENS and ONES[word] == 0):
                return None
            current += ONES[word]
        elif word in TENS:
            if last in ONES or last in TENS:
                return None
            current += TENS[word]
        elif word in SCALES:
            scale = SCALES[word]
            if scale == 100:
                if current == 0 or current >= 100 or last == "hundred":
                    return None
                current *= 100
            else:
                if current == 0 or scale >= last_scale:
                    return None  # scales fall: "two thousand million" is not read here
                total += current * scale
                last_scale = scale
                current = 0
        else:
            return None
        last = word
    return total + current


def parse_year(phrase: str) -> int | None:
    """``twenty twenty five`` = 2025, ``nineteen ninety`` = 1990, ``two thousand and five`` = 2005."""
    value = parse_cardinal(phrase)
    if value is not None:
        return value if 1000 <= value <= 2999 else None
    words = [w for w in re.split(r"[\s-]+", phrase.lower()) if w]
    century, rest = parse_cardinal(words[0]), parse_cardinal(" ".join(words[1:]))
    if century is not None and rest is not None and 10 <= century <= 29 and 10 <= rest <= 99:
        return century * 100 + rest
    return None


def _digits(words: str) -> str:
    return "".join("0" if w.lower() in ("oh", "zero") else str(ONES[w.lower()]) for w in words.split())


def _clock(phrase: str, meridiem: str) -> str | None:
    words = re.split(r"[\s-]+", phrase.lower())
    hour = parse_cardinal(words[0])
    if hour is None or not 1 <= hour <= 12:
        return None
    suffix = f"{meridiem.lower()}.m."
    if len(words) == 1:
        return f"{hour} {suffix}"
    rest = words[1:]
    minute = ONES.get(rest[1]) if rest[0] == "oh" and len(rest) == 2 else parse_cardinal(" ".join(rest))
    if minute is None or not 0 <= minute <= 59:
        return None
    return f"{hour}:{minute:02d} {suffix}"


def _number(m: re.Match[str]) -> str:
    if _PLURAL_NUMBER.match(m.string, m.end()):
        return m.group(0)  # "the nineteen nineties", "two hundreds": part of a bigger phrase
    value = parse_cardinal(m.group("num"))
    if m.group("mer"):
        clock = _clock(m.group("num"), m.group("mer"))
        return m.group(0) if clock is None else clock
    if value is None:
        return m.group(0)
    written = str(value)
    if m.group("frac"):
        written += "." + _digits(m.group("frac"))
    if m.group("cur"):
        symbol = CURRENCY_BEFORE[m.group("cur").lower()]
        if m.group("cents"):
            cents = parse_cardinal(m.group("cents"))
            if cents is None or cents >= 100 or "." in written:
                return m.group(0)
            written += f".{cents:02d}"
        return symbol + written
    if m.group("pct"):
        return written + "%"
    if m.group("unit") or m.group("frac") or value >= 10:
        return written
    return m.group(0)  # one to nine in running text stay words


def _ordinal_value(tens: str | None, word: str) -> int:
    return (TENS[tens.lower()] if tens else 0) + ORDINALS[word.lower()]


def _suffix(value: int) -> str:
    if value % 100 in (11, 12, 13):
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(value % 10, "th")


def _date(m: re.Match[str]) -> str:
    day_words = m.group("day")
    ordinal = _ORDINAL_RE.fullmatch(day_words)
    day = _ordinal_value(ordinal.group("tens"), ordinal.group("ord")) if ordinal else parse_cardinal(day_words)
    if day is None or not 1 <= day <= 31:
        return m.group(0)
    month = m.group("month")[0].upper() + m.group("month")[1:]
    if m.group("year"):
        year = parse_year(m.group("year"))
        if year is not None:
            return f"{month} {day}, {year}"
        return f"{month} {day}" + m.group(0)[m.end("day") - m.start() :]
    return f"{month} {day}"


def _ordinal(m: re.Match[str]) -> str:
    if m.group("tens") and m.group("ord").lower() in ("hundredth", "thousandth"):
        return m.group(0)
    value = _ordinal_value(m.group("tens"), m.group("ord"))
    return m.group(0) if value < 10 else f"{value}{_suffix(value)}"


def _year(m: re.Match[str]) -> str:
    # Only the two-part reading ("nineteen ninety"); one number ("in two thousand") is a cardinal.
    if parse_cardinal(m.group("year")) is not None or _PLURAL_NUMBER.match(m.string, m.end()):
        return m.group(0)
    year = parse_year(m.group("year"))
    return m.group(0) if year is None else f"{m.group('prep')} {year}"


def en_itn(text: str) -> str:
    """Spelled-out numbers in English text to written form; everything else unchanged."""
    text = _DATE.sub(_date, text)
    text = _YEAR.sub(_year, text)
    text = _ORDINAL_RE.sub(_ordinal, text)
    return _NUMBER.sub(_number, text)
