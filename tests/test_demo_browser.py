"""The demo page in a real browser: headless Chromium (Selenium, /usr/bin/chromedriver) drives the app served
in-process on a free loopback port, and what the page shows is checked against AdaptiveM3 itself.

Needs the `browser-test` extra (gradio, selenium) and Debian's chromium + chromium-driver: skipped without them,
required where M3_REQUIRE_EXTRAS=1 (.ci/run installs all and sets it).
Set M3_DEMO_SCREENSHOT=PATH to keep the screenshot somewhere (docs/demo.png comes from here).
"""

import os
import socket
from pathlib import Path

import pytest

from . import extras

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")

# skipped without them, naming the install command; required where M3_REQUIRE_EXTRAS=1 (.ci/run)
for _module in ("gradio", "selenium"):
    extras.need(_module, "browser-test")
if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
    extras.absent(f"{CHROMIUM} or {CHROMEDRIVER} is absent", "chromium")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from m3_demo.app import NO_IMAGE, NO_QUESTION, build_demo, launch_kwargs  # noqa: E402
from m3_demo.examples import load_examples  # noqa: E402
from m3_demo.session import load_demo_model  # noqa: E402

FLAGS = (
    "--headless=new --no-sandbox --disable-dev-shm-usage --disable-gpu --no-first-run --disable-background-networking "
    "--disable-component-update --disable-sync --disable-quic --window-size=1440,1560"
).split()
WAIT_S = 60  # generous: the CI machine is shared


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def demo_model():
    return load_demo_model()


@pytest.fixture(scope="module")
def url(demo_model):
    blocks = build_demo(demo_model)
    _, address, _ = blocks.launch(
        server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True, **launch_kwargs()
    )
    try:
        yield address
    finally:
        blocks.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, condition, what: str):
    return WebDriverWait(driver, WAIT_S).until(lambda d: condition(d), message=f"waited {WAIT_S} s for {what}")


def find(driver, selector: str):
    return driver.find_element(By.CSS_SELECTOR, selector)


def open_page(driver, url: str) -> None:
    driver.get(url)
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#m3-ask"), "the page")


def pick_example_image(driver, index: int) -> None:
    find(driver, "#m3-example-images").find_elements(By.CSS_SELECTOR, ".gallery-item")[index].click()
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#m3-image img"), "the example image")


def pick_example_question(driver, question: str) -> None:
    items = find(driver, "#m3-example-questions").find_elements(By.CSS_SELECTOR, ".gallery-item")
    next(item for item in items if item.text.strip() == question).click()
    box = find(driver, "#m3-question textarea")
    wait_for(driver, lambda d: box.get_attribute("value") == question, "the example question")


def message(driver) -> str:
    return find(driver, "#m3-message").text.strip()


def routed_scale(driver) -> int | None:
    found = driver.find_elements(By.CSS_SELECTOR, "#m3-summary [data-routed-scale]")
    return int(found[0].get_attribute("data-routed-scale")) if found else None


def set_number(driver, slider_id: str, value: str) -> None:
    """Type into a slider's number box and leave it, as a person would."""
    box = find(driver, f"#{slider_id} input[type=number]")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(value, Keys.TAB)


def pick_epsilon(driver, label: str) -> None:
    box = find(driver, "#m3-epsilon input[role=combobox]")
    box.click()
    selector = f"#{box.get_attribute('aria-controls')} li[role=option][aria-label='{label}']"
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, selector), "the eps options")[0].click()


def find_cards(driver) -> list:
    return driver.find_elements(By.CSS_SELECTOR, "#m3-scales .m3-card")


def no_error_toast(driver) -> bool:
    return not driver.find_elements(By.CSS_SELECTOR, ".toast-body.error")


def test_mistakes_get_a_message_on_the_page_not_a_traceback(browser, url, tmp_path):
    open_page(browser, url)
    find(browser, "#m3-ask").click()
    wait_for(browser, lambda d: NO_IMAGE in message(d), "the no-image message")
    pick_example_image(browser, 0)
    find(browser, "#m3-ask").click()  # the question box is still empty
    wait_for(browser, lambda d: NO_QUESTION in message(d), "the empty-question message")
    broken = tmp_path / "holiday.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n but not an image")
    upload = browser.find_element(By.CSS_SELECTOR, "input[type=file][data-testid='Upload an image-upload-button']")
    upload.send_keys(str(broken))
    wait_for(browser, lambda d: "holiday.png is not an image the demo can read" in message(d), "the bad-upload message")
    assert "Traceback" not in browser.page_source and no_error_toast(browser)
    assert not browser.find_elements(By.CSS_SELECTOR, "#m3-image img")  # the bad upload replaced the image
    assert routed_scale(browser) is None
    mine = tmp_path / "mine.png"
    mine.write_bytes(load_examples().images[3].read_bytes())
    upload.send_keys(str(mine))  # a good upload is shown and clears the message
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#m3-image img") and not message(d), "the upload")


def test_every_scale_answers_as_adaptive_generate_and_the_routed_one_is_highlighted(browser, url, demo_model, tmp_path):
    examples = load_examples()
    image, question = str(examples.images[1]), examples.questions["white_frame"]
    adaptive = demo_model.adaptive
    expected = {scale: adaptive.generate(image, question, scale=scale).answer for scale in demo_model.scales}
    routed = adaptive.generate(image, question)

    open_page(browser, url)
    pick_example_image(browser, 1)
    pick_example_question(browser, question)
    find(browser, "#m3-ask").click()
    wait_for(browser, routed_scale, "the answers")
    cards = find_cards(browser)
    shown = {int(card.get_attribute("data-scale")): card.get_attribute("data-answer") for card in cards}
    assert shown == expected
    for card in cards:  # what a person reads: the answer, the pooled image, the P(correct) bar
        assert card.find_element(By.CSS_SELECTOR, ".m3-answer").text.startswith(card.get_attribute("data-answer"))
        assert browser.execute_script("return arguments[0].naturalWidth", card.find_element(By.TAG_NAME, "img")) > 0
        assert card.find_elements(By.CSS_SELECTOR, ".m3-bar .m3-fill")
    highlighted = [int(c.get_attribute("data-scale")) for c in cards if "routed" in c.get_attribute("class").split()]
    assert highlighted == [routed.scale] == [routed_scale(browser)]
    summary = find(browser, "#m3-summary").text
    assert routed.answer in summary and "certified at ε = 0.02" in summary and "LLaVA-1.5-7B" in summary
    assert no_error_toast(browser) and message(browser) == ""
    screenshot = Path(os.environ.get("M3_DEMO_SCREENSHOT") or tmp_path / "demo.png")
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 0

    # the controls re-route from the same answers, as generate would with the same settings
    set_number(browser, "m3-threshold", "1")
    strict = adaptive.generate(image, question, threshold=1.0).scale
    wait_for(browser, lambda d: routed_scale(d) == strict, f"the routing at threshold 1 ({strict})")
    set_number(browser, "m3-budget", "36")
    capped = adaptive.generate(image, question, threshold=1.0, max_tokens=36).scale
    wait_for(browser, lambda d: routed_scale(d) == capped, f"the routing under a 36-token cap ({capped})")
    assert "not certified" in find(browser, "#m3-summary").text
    set_number(browser, "m3-budget", "576")
    pick_epsilon(browser, "0.1")  # the eps control sets the threshold to that epsilon's certified one
    certified = next(c for c in demo_model.certificates if c.epsilon == 0.1).threshold
    loose = adaptive.generate(image, question, threshold=certified).scale
    wait_for(browser, lambda d: "certified at ε = 0.1 " in find(d, "#m3-summary").text, "the eps 0.1 routing")
    assert routed_scale(browser) == loose and f"threshold {certified:.3f}" in find(browser, "#m3-cert").text
    after = {int(c.get_attribute("data-scale")): c.get_attribute("data-answer") for c in find_cards(browser)}
    assert after == expected  # re-routing ran no model: the answers stay
