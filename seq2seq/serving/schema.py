"""The HTTP API's request and response shapes (pydantic), and readable validation messages.

Requests are strict: an unknown field, a number given as a string or a bool given as 0/1 is a 422
naming the field, never a silent coercion. The OpenAPI schema at /openapi.json is generated from these.
"""

from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictStr


class TranslateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={
        "examples": [{"text": "Ein Hund läuft im Schnee."},
                     {"text": ["Ein Mann schläft.", "Zwei Hunde spielen."], "beam_size": 5, "nbest": 3}]})

    text: Union[StrictStr, list[StrictStr]] = Field(
        description="one line, or a list of lines; line breaks inside a line become spaces")
    beam_size: Optional[int] = Field(None, ge=1, description="beam width (1 = greedy; default: the checkpoint's)")
    nbest: int = Field(1, ge=1, description="hypotheses returned per line (widens the beam to at least this)")
    length_penalty: Optional[float] = Field(None, ge=0, allow_inf_nan=False,
                                            description="rank by score / length ** this (default: the checkpoint's)")
    sample: bool = Field(False, description="sample instead of searching (temperature, top_k, seed apply)")
    temperature: float = Field(1.0, gt=0, le=100, allow_inf_nan=False, description="sampling temperature")
    top_k: int = Field(0, ge=0, description="sample among the k most likely pieces (0 = all)")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="sampling seed: the same seed and lines give the same samples")
    alignment: bool = Field(False, description="add alignment, src_pieces, tgt_pieces and the attention matrix")


class Hypothesis(BaseModel):
    translation: str
    score: float = Field(description="sum of its token log-probabilities (EOS included)")
    normalized_score: float = Field(description="score / length ** length_penalty: what the list is ranked by")


class TranslationOut(BaseModel):
    translation: str = Field(description="the detokenized best hypothesis")
    score: float = Field(description="sum of its token log-probabilities (EOS included)")
    normalized_score: float = Field(description="score / length ** length_penalty")
    finished: bool = Field(description="false: cut at the maximum output length")
    nbest: list[Hypothesis] = Field(description="best first by normalized_score; one entry unless nbest > 1")
    alignment: Optional[str] = Field(None, description="`src-tgt` pairs of 0-based piece positions")
    src_pieces: Optional[list[str]] = None
    tgt_pieces: Optional[list[str]] = None
    attention: Optional[list[list[float]]] = Field(
        None, description="[target pieces (+ EOS when finished)][source pieces + EOS]; null without attention")


class TranslateResponse(BaseModel):
    translations: list[TranslationOut]


class Health(BaseModel):
    status: str


class Info(BaseModel):
    src_lang: Optional[str]
    tgt_lang: Optional[str]
    description: str = Field(description="sacrebleu-style key:value|... description of the model")
    model: dict[str, Any]
    search: dict[str, Any]
    device: str
    batching: dict[str, Any]
    limits: dict[str, Any]


def _where(loc) -> str:
    """`beam_size`, `text[2]`: the field at fault, without pydantic's union-member labels."""
    name = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        if part in ("str", "list[str]"):
            continue
        name += f"[{part}]" if isinstance(part, int) or str(part).isdigit() else (f".{part}" if name else str(part))
    return name or "body"


def describe_errors(errors) -> str:
    """`field: message; ...` for a 422, e.g. `beam_size: Input should be greater than or equal to 1`."""
    errors = list(errors)
    text_errors = [e for e in errors if tuple(e.get("loc", ()))[:2] == ("body", "text")]
    if any(len(e["loc"]) > 3 for e in text_errors):  # a list with a bad item: the str branch is noise
        errors = [e for e in errors if e not in text_errors or len(e["loc"]) > 3]
    elif len(text_errors) == 2:  # neither a string nor a list: one message, not one per union member
        errors = [e for e in errors if e is not text_errors[1]]
    out = []
    for e in errors:
        loc, kind = tuple(e.get("loc", ())), e.get("type")
        if kind == "json_invalid":
            ctx = e.get("ctx", {}).get("error", "")
            out.append(f"malformed JSON at character {loc[-1]}: {ctx}".rstrip(": "))
        elif loc == ("body",) and kind in ("missing", "model_attributes_type", "dict_type"):
            out.append("body: send a JSON object with a 'text' field (Content-Type: application/json)")
        elif loc[:2] == ("body", "text") and loc[2:] in (("str",), ("list[str]",)):  # neither str nor list
            out.append("text: Input should be a string or a list of strings")
        else:
            out.append(f"{_where(loc)}: {e.get('msg', 'invalid')}")
    return "; ".join(dict.fromkeys(out))


def jsonable_errors(errors) -> list[dict[str, Any]]:
    """The errors without their `ctx`/`input` objects (which need not be JSON-serialisable)."""
    return [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in errors]
