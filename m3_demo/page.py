"""The demo page's HTML pieces, as pure functions of an answered question and the routing controls.

Every scale card carries ``data-scale``, ``data-answer`` and ``data-routed`` attributes, so a browser test reads
the page the way a person does, without scraping layout. No Gradio here: the app only wires these to components.
"""

from __future__ import annotations

import base64
import io
import math
from html import escape

import numpy as np
from PIL import Image

from predictor.risk_control import Certificate

from .session import Asked
from .views import Saving, pooled_view

P_VALUE_NAMES = {"binomial": "binomial", "berger_boos": "Berger-Boos", "betting": "betting"}

CSS = """
#m3-scales { gap: 10px; flex-wrap: nowrap; }
.m3-card { border: 2px solid #d0d4dc; border-radius: 10px; padding: 8px; background: #fff; color: #1f2937; }
.m3-card.routed { border: 4px solid #e8590c; background: #fff4e6; }
.m3-card.over-cap { opacity: 0.45; }
.m3-card .m3-head { display: flex; justify-content: space-between; font-weight: 700; font-size: 15px; }
.m3-card .m3-badge { background: #e8590c; color: #fff; border-radius: 6px; padding: 0 6px; font-size: 12px; }
.m3-card img { width: 100%; image-rendering: pixelated; border-radius: 4px; margin: 6px 0; }
.m3-card .m3-answer { font-size: 20px; font-weight: 700; margin: 2px 0; }
.m3-card .m3-right { color: #2b8a3e; } .m3-card .m3-wrong { color: #c92a2a; }
.m3-card .m3-row { font-size: 13px; color: #4b5563; }
.m3-bar { position: relative; height: 14px; background: #e5e7eb; border-radius: 7px; margin-top: 4px; }
.m3-bar .m3-fill { height: 100%; border-radius: 7px; background: #4263eb; }
.m3-bar .m3-mark { position: absolute; top: -3px; bottom: -3px; width: 2px; background: #111827; }
.m3-message { border-radius: 8px; padding: 8px 12px; font-size: 15px; }
.m3-message.error { background: #fff5f5; border: 1px solid #ffa8a8; color: #c92a2a; }
.m3-message.info { background: #f1f3f5; border: 1px solid #dee2e6; color: #343a40; }
.m3-summary { font-size: 15px; line-height: 1.5; color: #1f2937; }
.m3-summary b.m3-routed-answer { color: #e8590c; }
"""


def message_html(text: str, kind: str = "error") -> str:
    """A message box (``kind``: ``error`` or ``info``); empty text gives an empty box."""
    if not text:
        return ""
    return f'<div class="m3-message {kind}" role="{"alert" if kind == "error" else "status"}">{escape(text)}</div>'


def png_data_uri(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def scale_card_html(
    asked: Asked,
    index: int,
    routed: int,
    threshold: float,
    max_tokens: int | None,
    grid_tokens: int,
    truth: str | None = None,
    rule: str = "threshold",
) -> str:
    """One scale's column: the pooled image, the answer (marked right or wrong when the truth is known), its
    confidence (geometric-mean token probability), the visual tokens and P(correct) as a bar with the threshold
    (``rule="price"``: ``threshold`` is the price; the bar shows what the scale is worth after paying for its
    tokens, P(correct) - price * tokens / tokens of the largest scale)."""
    scale, answer = asked.scales[index], asked.answers[index]
    tokens, probability = asked.visual_tokens[index], asked.probabilities[index]
    is_routed = scale == routed
    over_cap = max_tokens is not None and tokens > max_tokens
    classes = " ".join(["m3-card", *(["routed"] if is_routed else []), *(["over-cap"] if over_cap else [])])
    badge = '<span class="m3-badge">routed</span>' if is_routed else ""
    mark = ""
    if truth is not None:
        right = answer.strip().lower() == truth.strip().lower()
        mark = f' <span class="{"m3-right" if right else "m3-wrong"}">{"&#10003;" if right else "&#10007;"}</span>'
    view = pooled_view(asked.pixels, scale, grid_tokens, display_size=192)
    cap_note = '<div class="m3-row">over the token cap</div>' if over_cap else ""
    if rule == "price":
        net = probability - threshold * tokens / max(asked.visual_tokens)
        title, bar_mark = f"P(correct) {probability:.3f}, minus price {threshold:.3f} for its tokens: {net:.3f}", ""
        worth = f'<div class="m3-row">after price {net:+.2f}</div>'
    else:
        title = f"P(correct) {probability:.3f}; the black mark is the threshold {threshold:.3f}"
        bar_mark, worth = f'<div class="m3-mark" style="left: {100 * threshold:.1f}%"></div>', ""
    return (
        f'<div class="{classes}" data-scale="{scale}" data-routed="{str(is_routed).lower()}" '
        f'data-answer="{escape(answer)}" data-probability="{probability:.6f}">'
        f'<div class="m3-head"><span>{scale} token{"s" if scale != 1 else ""}</span>{badge}</div>'
        f'<img src="{png_data_uri(view)}" alt="the image averaged to {scale} cells, as {scale}-token pooling does">'
        f'<div class="m3-answer">{escape(answer) or "&lt;empty&gt;"}{mark}</div>'
        f'<div class="m3-row">confidence {math.exp(asked.confidences[index]):.2f}</div>'
        f'<div class="m3-row">visual tokens {tokens}</div>'
        f'<div class="m3-row">P(correct) {probability:.2f}</div>{worth}'
        f'<div class="m3-bar" title="{title}">'
        f'<div class="m3-fill" style="width: {100 * probability:.1f}%"></div>{bar_mark}</div>'
        f"{cap_note}</div>"
    )


def certificate_html(certificate: Certificate | None) -> str:
    """What a certificate promises, in one paragraph (a pointer to the menu without one)."""
    if certificate is None:
        return "<p>The default operating point is not a certified one: pick an ε to route where it is certified.</p>"
    method = P_VALUE_NAMES.get(certificate.p_value_method, certificate.p_value_method)
    head = f"ε = {certificate.epsilon:g}, δ = {certificate.delta:g}, n = {certificate.n} calibration queries ({method})"
    if certificate.threshold is None:
        return f"<p>{head}: no threshold certified at this ε, so every query goes to the largest scale.</p>"
    calibration = ""
    if certificate.calibration_tokens is not None and certificate.calibration_drop is not None:
        calibration = (
            f" On the calibration queries it used {certificate.calibration_tokens:.1f} visual tokens on average and "
            f"lost {100 * certificate.calibration_drop:.1f} points of accuracy."
        )
    return (
        f"<p>{head}: {certificate.rule} {certificate.threshold:.3f}. With probability at least "
        f"{1 - certificate.delta:g}, routing at it loses at most {100 * certificate.epsilon:g} points of accuracy "
        f"against always 576 tokens, on queries like the calibration ones.{calibration}</p>"
    )


def summary_html(
    asked: Asked,
    routed: int,
    saving: Saving,
    threshold: float,
    certified: Certificate | None,
    truth: str | None = None,
    rule: str = "threshold",
) -> str:
    """The routed choice and what it saves against 576 tokens, in tokens and in prefill FLOPs of a real model; the
    rule and value it was routed by (``threshold`` is the price for ``rule="price"``) and whether that is certified."""
    answer = asked.answer_of[routed]
    rule = (
        f"{rule} {threshold:.3f}, certified at ε = {certified.epsilon:g} (δ = {certified.delta:g})"
        if certified is not None
        else f"{rule} {threshold:.3f}, not certified"
    )
    truth_note = f" (true answer: {escape(truth)})" if truth is not None else ""
    return (
        f'<div class="m3-summary" data-routed-scale="{routed}">'
        f'Routed to <b>{routed}</b> visual tokens ({rule}): <b class="m3-routed-answer">{escape(answer)}</b>'
        f"{truth_note}.<br>"
        f"Against 576 tokens this saves <b>{saving.tokens_saved}</b> visual tokens; on {saving.model} "
        f"(prefill with {saving.text_tokens} text tokens, m3/flops.py) the LLM prefill is "
        f"<b>{saving.llm_flops / 1e12:.2f}</b> instead of {saving.full_llm_flops / 1e12:.2f} TFLOPs "
        f"(<b>{100 * saving.llm_share_saved:.0f}&nbsp;%</b> less); with the vision tower, which runs at every scale, "
        f"{saving.total_flops / 1e12:.2f} instead of {saving.full_total_flops / 1e12:.2f} TFLOPs "
        f"({100 * saving.total_share_saved:.0f}&nbsp;% less).</div>"
    )
