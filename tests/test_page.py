"""The service's page in a real headless browser (Debian's chromium through Selenium), against the Serve app of
tests/test_serve.py: the page loads without the token, refuses a wrong one, and renders a request's images."""

import os
from pathlib import Path

import pytest
import requests
from test_serve import TOKEN, service  # noqa: F401  (the module-scoped service fixture)

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser():
    if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):
        pytest.fail("chromium and chromium-driver are missing: run `make setup` (scripts/setup.sh installs them)")
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium must not try to download a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def shot(driver, name: str) -> None:
    """A screenshot for the README when KKA_SCREENSHOT_DIR is set (docs/screenshots/ when made for it)."""
    folder = os.environ.get("KKA_SCREENSHOT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / name))


def test_the_page_generates_and_shows_anomalies(service, browser):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    url, _ = service
    assert requests.get(f"{url}/", timeout=30).status_code == 200  # the page itself needs no token
    browser.get(f"{url}/")
    wait = WebDriverWait(browser, 60)
    browser.find_element(By.ID, "token").send_keys("a-wrong-token-of-enough-length")
    browser.find_element(By.ID, "connect").click()
    wait.until(lambda d: "401" in d.find_element(By.ID, "status").text)
    token = browser.find_element(By.ID, "token")
    token.clear()
    token.send_keys(TOKEN)
    browser.find_element(By.ID, "connect").click()
    wait.until(lambda d: d.find_element(By.ID, "generate").is_enabled())
    Select(browser.find_element(By.ID, "dataset")).select_by_value("fashion_mnist")
    Select(browser.find_element(By.ID, "normal_class")).select_by_value("shirt")
    count = browser.find_element(By.ID, "count")
    count.clear()
    count.send_keys("3")
    browser.find_element(By.ID, "generate").click()
    WebDriverWait(browser, 300).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results .card"))
    cards = browser.find_elements(By.CSS_SELECTOR, "#results .card")
    images = browser.find_elements(By.CSS_SELECTOR, "#results .card img")
    assert cards and len(images) == len(cards)
    assert all(i.get_attribute("src").startswith("data:image/png;base64,") for i in images)
    verdicts = [c.find_element(By.CLASS_NAME, "verdict").text for c in cards]
    assert all(v.startswith(("hard, distance", "easy, distance")) for v in verdicts)
    assert "anomalies" in browser.find_element(By.ID, "status").text
    assert browser.find_element(By.ID, "download").is_enabled()
    shot(browser, "page.png")


def test_the_run_viewer_shows_every_iteration_and_filters(tiny_run, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from kka_ray.store import RunStore

    cfg, state = tiny_run
    store = RunStore(f"{cfg.run_dir}/{cfg.name}")
    generated = [store.read_table(f"iter_{r['iteration']}/generated.parquet") for r in state.rows]
    browser.get(Path(store.path("report.html")).resolve().as_uri())
    headings = [h.text for h in browser.find_elements(By.TAG_NAME, "h3")]
    assert headings == [f"Iteration {r['iteration']}" for r in state.rows]
    assert len(browser.find_elements(By.CSS_SELECTOR, "img.grid")) >= len(state.rows)

    def shown() -> int:
        return int(browser.find_element(By.ID, "shown").text)

    assert shown() == sum(len(t) for t in generated)
    Select(browser.find_element(By.ID, "verdict")).select_by_value("hard")
    assert shown() == sum(sum(t.column("hard").to_pylist()) for t in generated)
    Select(browser.find_element(By.ID, "it")).select_by_value("1")
    assert shown() == sum(generated[1].column("hard").to_pylist())
    shot(browser, "run-viewer.png")
