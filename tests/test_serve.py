"""The Serve application over real HTTP on 127.0.0.1, serving the tiny KKA run (its adapters and evaluator)."""

import base64
import io
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from kka_ray.config import load_config
from kka_ray.serve.config import ServeConfig

TOKEN_ENV = "KKA_TEST_SERVE_TOKEN"
TOKEN = "s3cret-for-the-test-service"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def service(tiny_run, tiny):
    from ray import serve

    from kka_ray.serve.app import build_app, http_options

    _, state = tiny_run
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = load_config(ServeConfig, None, [
        f"run={state.store.location}", f"render.model={tiny['sd']}", "render.steps=2", "render.cpus_per_actor=0.5",
        "generate.lm.cpus_per_actor=0.5", f"auth.token_env={TOKEN_ENV}", f"port={port}", "limits.max_count=10",
        "limits.max_descriptions=2", "limits.max_text_chars=40", "limits.max_body_bytes=2048",
        "limits.max_ongoing_requests=2", "limits.max_queued_requests=2", "limits.retry_after_s=7"])
    os.environ[TOKEN_ENV] = TOKEN
    serve.start(http_options=http_options(cfg))
    serve.run(build_app(cfg), name="kka-test", route_prefix="/")
    yield f"http://127.0.0.1:{port}", state
    serve.shutdown()
    del os.environ[TOKEN_ENV]


def post(url, body, headers=AUTH):
    return requests.post(f"{url}/v1/anomalies", json=body, headers=headers, timeout=300)


def test_health_needs_no_token_and_models_do(service):
    url, state = service
    assert requests.get(f"{url}/healthz", timeout=30).json() == {"status": "ok"}
    assert requests.get(f"{url}/v1/models", timeout=30).status_code == 401
    assert requests.get(f"{url}/v1/models", headers={"Authorization": "Bearer nope"}, timeout=30).status_code == 401
    models = requests.get(f"{url}/v1/models", headers=AUTH, timeout=30).json()
    assert models["run"] == state.store.location and models["evaluator"].endswith("iter_2/evaluator")
    assert sorted(models["adapters"]) == ["0", "1", "2"] and models["adapters"]["0"] == ""
    rows = state.rows  # iteration t + 1 is served with the adapter that generated it
    for t in (1, 2):
        expected = rows[t - 1]["next_adapter"]
        assert models["adapters"][str(t)] == (state.store.uri(expected) if expected else "")
    assert (models["image_size"], models["channels"]) == (28, 1)


def test_valid_request_returns_images_hardness_and_provenance(service):
    url, _ = service
    r = post(url, {"normal_descriptions": ["a photo of a shirt"], "count": 3, "seed": 5, "iteration": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert 0 < len(body["anomalies"]) <= 3 and body["requested"] == 3 and body["boundary"] is not None
    for a in body["anomalies"]:
        img = np.asarray(Image.open(io.BytesIO(base64.b64decode(a["image_png_base64"]))))
        assert img.shape == (28, 28) and img.dtype == np.uint8
        assert isinstance(a["distance"], float) and a["hard"] == (a["distance"] < body["boundary"])
        p = a["provenance"]
        assert p["iteration"] == 2 and p["adapter"].endswith("/adapter") and p["seed"] >= 0
        assert p["normal_description"] == "a photo of a shirt" and "a photo of a shirt" in p["prompt"]
    again = post(url, {"normal_descriptions": ["a photo of a shirt"], "count": 3, "seed": 5, "iteration": 2}).json()
    assert [a["description"] for a in again["anomalies"]] == [a["description"] for a in body["anomalies"]]


def test_adapter_selection_and_dataset_requests(service):
    url, _ = service
    base = post(url, {"dataset": "fashion_mnist", "normal_class": "shirt", "count": 2, "iteration": 0,
                      "return_images": False}).json()
    last = post(url, {"dataset": "fashion_mnist", "normal_class": "shirt", "count": 2,
                      "return_images": False}).json()  # no iteration: the run's last
    assert {a["provenance"]["adapter"] for a in base["anomalies"]} == {""}
    assert {a["provenance"]["iteration"] for a in last["anomalies"]} == {2}
    assert all(a["provenance"]["adapter"].endswith("/adapter") for a in last["anomalies"])
    assert all(a["image_png_base64"] is None and a["distance"] is not None for a in base["anomalies"])


@pytest.mark.parametrize("body, field", [
    ({"normal_descriptions": ["a shirt"], "count": 0}, "count"),
    ({"normal_descriptions": ["a shirt"], "count": 11}, "count"),
    ({"normal_descriptions": ["a shirt"], "count": 1, "iteration": 7}, "iteration"),
    ({"normal_descriptions": ["a shirt"] * 3, "count": 1}, "normal_descriptions"),
    ({"normal_descriptions": ["x" * 41], "count": 1}, "normal_descriptions"),
    ({"normal_descriptions": [], "count": 1}, "normal_descriptions"),
    ({"dataset": "imagenet", "normal_class": "cat", "count": 1}, "dataset"),
    ({"dataset": "fashion_mnist", "normal_class": "cat", "count": 1}, "normal_class"),
    ({"normal_descriptions": ["a shirt"], "domain": "y" * 41}, "domain"),
    ({"normal_descriptions": ["a shirt"], "colour": "red"}, "colour"),
    ({"count": 1}, "normal_descriptions"),
])
def test_bad_requests_get_422_naming_the_field(service, body, field):
    url, _ = service
    r = post(url, body)
    assert r.status_code == 422, r.text
    assert field in r.text


def test_missing_or_wrong_token_is_401_before_validation(service):
    url, _ = service
    assert post(url, {"count": 0}, headers={}).status_code == 401
    assert post(url, {"normal_descriptions": ["a shirt"]}, headers={"Authorization": "Bearer x"}).status_code == 401
    malformed = requests.post(f"{url}/v1/anomalies", data=b"{not json", timeout=30,
                              headers={"Content-Type": "application/json"})
    assert malformed.status_code == 401  # not 422: nothing is parsed before the token
    for page in ("/docs", "/openapi.json", "/redoc"):
        assert requests.get(f"{url}{page}", timeout=30).status_code == 401, page
    assert requests.get(f"{url}/openapi.json", headers=AUTH, timeout=30).status_code == 200


def test_oversized_body_is_413_and_the_token_never_reaches_ray(service):
    import psutil

    url, _ = service
    r = requests.post(f"{url}/v1/anomalies", headers=AUTH, timeout=30,
                      json={"normal_descriptions": ["a shirt " * 300], "count": 1})
    assert r.status_code == 413 and "2048 bytes" in r.text
    # A runtime_env's variables (which the dashboard and state API display) land in the replica's environment.
    ingress = [p for p in psutil.process_iter(["cmdline"])
               if " ".join(p.info["cmdline"] or ()).startswith("ray::ServeReplica:kka-test:Ingress")]
    assert ingress and all(TOKEN not in p.environ().values() for p in ingress)


def test_beyond_the_queue_requests_are_refused_with_retry_after(service):
    from concurrent.futures import ThreadPoolExecutor

    url, _ = service
    body = {"normal_descriptions": ["a photo of a shirt"], "count": 2, "return_images": False}
    with ThreadPoolExecutor(12) as pool:  # 2 in flight + 2 queued at the ingress: the rest are turned away
        answers = list(pool.map(lambda s: post(url, {**body, "seed": s}), range(12)))
    refused = [r for r in answers if r.status_code == 503]
    assert refused and all(r.headers.get("Retry-After") == "7" for r in refused)
    assert any(r.status_code == 200 for r in answers)
    assert {r.status_code for r in answers} <= {200, 503}


# The service's page in a real headless browser (Debian's chromium through Selenium): the page loads without
# the token, refuses a wrong one, and renders a request's images; the run viewer shows the tiny run.

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


def test_the_page_generates_and_shows_anomalies(service, browser):
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
