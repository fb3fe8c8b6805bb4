"""The description stage against a real OpenAI-compatible HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest

from tasks.store import catalog
from tasks.semantics.descriptions import (
    DescriptionError,
    DescriptionSettings,
    generate_descriptions,
    render_prompt,
)
from fake_llm_server import FakeLLMServer, answer_text

SECRET = "sk-test-DO-NOT-LEAK-4242"


@pytest.fixture
def server() -> FakeLLMServer:
    with FakeLLMServer() as running:
        yield running


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """A known key in the environment, and no base URL from the machine running the tests."""
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def classes(*names: str, **descriptions: str) -> pd.DataFrame:
    return pd.DataFrame({"class_name": list(names), "description": [descriptions.get(n) for n in names]})


def template(tmp_path: Path, text: str = "Tell me how {class_name} looks and sounds.\n{class_name}:") -> Path:
    path = tmp_path / "prompt.txt"
    path.write_text(text)
    return path


def llm_settings(server: FakeLLMServer, tmp_path: Path, **overrides: object) -> DescriptionSettings:
    fields = dict(
        mode="llm",
        template=template(tmp_path),
        model="test-model",
        base_url=server.base_url,
        timeout_s=0.5,
        max_retries=2,
        backoff_s=0.01,
    )
    return DescriptionSettings(**(fields | overrides))


def rows(table) -> list[tuple[str, str, str]]:
    assert table.schema == catalog.DESCRIPTIONS
    return list(zip(*(table.column(name).to_pylist() for name in catalog.DESCRIPTIONS.names)))


def test_llm_descriptions_come_from_the_rendered_template(server, tmp_path):
    settings = llm_settings(server, tmp_path)
    table = generate_descriptions(classes("dog", "ApplyEyeMakeup"), settings, tmp_path / "cache")

    prompt_text = settings.template.read_text()
    prompts = [render_prompt(prompt_text, name) for name in ("dog", "ApplyEyeMakeup")]
    assert "Tell me how Apply Eye Makeup looks and sounds.\nApply Eye Makeup:" in prompts
    assert sorted(server.prompts) == sorted(prompts)
    assert rows(table) == [
        ("dog", answer_text(prompts[0]), "llm:test-model"),
        ("ApplyEyeMakeup", answer_text(prompts[1]), "llm:test-model"),
    ]
    assert {(r.model, r.temperature, r.authorization) for r in server.requests} == {
        ("test-model", 0.0, f"Bearer {SECRET}")
    }


def test_shipped_template_asks_for_sound_and_look(server, tmp_path):
    settings = llm_settings(server, tmp_path, template=DescriptionSettings().template)
    generate_descriptions(classes("cat purring"), settings, tmp_path / "cache")
    (prompt,) = server.prompts
    assert "sounds like" in prompt and "looks like" in prompt and prompt.endswith("cat purring:")


def test_rerun_with_nothing_changed_makes_no_request(server, tmp_path):
    settings = llm_settings(server, tmp_path)
    first = generate_descriptions(classes("dog", "cat", "eel"), settings, tmp_path / "cache")
    assert len(server.requests) == 3
    second = generate_descriptions(classes("dog", "cat", "eel"), settings, tmp_path / "cache")
    assert len(server.requests) == 3
    assert second.equals(first)


def test_template_change_regenerates_every_class(server, tmp_path):
    settings = llm_settings(server, tmp_path)
    generate_descriptions(classes("dog", "cat"), settings, tmp_path / "cache")
    settings.template.write_text("Describe {class_name} in one sentence.")
    table = generate_descriptions(classes("dog", "cat"), settings, tmp_path / "cache")
    assert len(server.requests) == 4
    assert all("in one sentence" in prompt for prompt in server.prompts[2:])
    assert all("in one sentence" in text for text in table.column("description").to_pylist())


def test_one_added_class_costs_one_request(server, tmp_path):
    settings = llm_settings(server, tmp_path)
    generate_descriptions(classes("dog", "cat"), settings, tmp_path / "cache")
    table = generate_descriptions(classes("dog", "cat", "eel"), settings, tmp_path / "cache")
    assert len(server.requests) == 3
    assert "eel" in server.prompts[-1]
    assert table.column("class_name").to_pylist() == ["dog", "cat", "eel"]


@pytest.mark.parametrize("mode", ["429", "500", "slow", "garbage", "wrong_shape", "empty"])
def test_transient_failures_are_retried(server, tmp_path, mode):
    server.script(mode, mode)
    table = generate_descriptions(classes("dog"), llm_settings(server, tmp_path, max_retries=2), tmp_path / "cache")
    assert len(server.requests) == 3
    assert rows(table) == [("dog", answer_text(server.prompts[-1]), "llm:test-model")]


def test_persistent_failure_names_the_class_and_a_rerun_resumes(server, tmp_path):
    settings = llm_settings(server, tmp_path)
    cache = tmp_path / "cache"
    server.fail_matching("Zebra", "500")
    with pytest.raises(DescriptionError, match=r"'Zebra': HTTP 500.*gave up after 3 attempts") as failure:
        generate_descriptions(classes("cat", "dog", "Zebra"), settings, cache)
    assert "'cat'" not in str(failure.value)
    assert sum("Zebra" in prompt for prompt in server.prompts) == 3
    assert len(list(cache.glob("*.json"))) == 2 and len(list(cache.iterdir())) == 2

    server.clear_failures()
    before = len(server.requests)
    table = generate_descriptions(classes("cat", "dog", "Zebra"), settings, cache)
    assert len(server.requests) == before + 1
    assert table.column("class_name").to_pylist() == ["cat", "dog", "Zebra"]


def test_the_key_never_leaves_the_process(server, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    settings = llm_settings(server, tmp_path)
    cache = tmp_path / "cache"
    table = generate_descriptions(classes("dog", "cat"), settings, cache)

    server.fail_matching("eel", "401")  # the server echoes the key, as some do
    with pytest.raises(DescriptionError, match="HTTP 401") as failure:
        generate_descriptions(classes("dog", "cat", "eel"), settings, cache)
    assert sum("eel" in prompt for prompt in server.prompts) == 1  # auth errors are not retried

    written = [path.read_text() for path in cache.iterdir()]
    assert len(written) == 2
    leaks = [str(failure.value), repr(failure.value), caplog.text, str(table.to_pydict()), *written]
    leaks.append(json.dumps(settings.cache_fields()) + repr(settings))
    assert not [text for text in leaks if SECRET in text]


def test_without_a_key_auto_mode_writes_offline_descriptions(server, tmp_path, caplog, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    caplog.set_level(logging.INFO, logger="cscf.descriptions")
    settings = DescriptionSettings(n_descriptions=3)

    first = generate_descriptions(classes("cat_purring", "PlayingDhol"), settings, tmp_path / "cache")
    second = generate_descriptions(classes("cat_purring", "PlayingDhol"), settings, tmp_path / "cache")

    assert first.equals(second)
    assert server.requests == []
    assert set(first.column("source").to_pylist()) == {"offline"}
    texts = first.column("description").to_pylist()
    assert len(set(texts)) == 6
    assert all("cat purring" in text for text in texts[:3]) and all("Playing Dhol" in text for text in texts[3:])
    offline_lines = [r.getMessage() for r in caplog.records if "offline writer" in r.getMessage()]
    assert len(offline_lines) == 2  # one per run
    assert "$OPENAI_API_KEY is not set" in offline_lines[0]
    assert settings.cache_fields()["mode"] == "offline"


def test_auto_mode_follows_the_openai_environment(server, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.setenv("CSCF_TEST_KEY", "sk-other")
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    settings = DescriptionSettings(api_key_env="CSCF_TEST_KEY", template=template(tmp_path), backoff_s=0.01)
    table = generate_descriptions(classes("dog"), settings, tmp_path / "cache")
    assert table.column("source").to_pylist() == ["llm:gpt-4o-mini"]
    assert [r.authorization for r in server.requests] == ["Bearer sk-other"]
    assert settings.cache_fields()["mode"] == "llm"


def test_several_descriptions_per_class(tmp_path):
    with FakeLLMServer(honour_n=False) as one_choice_server:
        settings = llm_settings(one_choice_server, tmp_path, n_descriptions=3)
        table = generate_descriptions(classes("dog"), settings, tmp_path / "cache")
        assert [r.n for r in one_choice_server.requests] == [3, 2, 1]
    assert table.column("class_name").to_pylist() == ["dog"] * 3


def test_requests_run_concurrently_up_to_the_limit(tmp_path):
    with FakeLLMServer(answer_delay_s=0.2) as slow_server:
        settings = llm_settings(slow_server, tmp_path, concurrency=3)
        generate_descriptions(classes(*[f"class{i}" for i in range(7)]), settings, tmp_path / "cache")
        assert slow_server.max_in_flight == 3


def test_user_and_published_descriptions_come_first(server, tmp_path):
    published = tmp_path / "published.csv"
    pd.DataFrame(
        {"name": ["dog", "eel", "cat"], "description_1": ["Barks.", "", "Meows."], "description_2": ["Wags.", "", ""]}
    ).to_csv(published, index=False)
    settings = llm_settings(server, tmp_path, published_csv=published)

    table = generate_descriptions(classes("cat", "dog", "eel", cat="A small feline."), settings, tmp_path / "cache")

    assert len(server.requests) == 1 and "eel" in server.prompts[0]
    assert [(name, source) for name, _, source in rows(table)] == [
        ("cat", "user"),
        ("dog", "published"),
        ("dog", "published"),
        ("eel", "llm:test-model"),
    ]
    assert table.column("description").to_pylist()[:3] == ["A small feline.", "Barks.", "Wags."]


def test_cache_fields_follow_content_not_paths_or_servers(server, tmp_path):
    settings = llm_settings(server, tmp_path)
    moved = tmp_path / "copy.txt"
    moved.write_text(settings.template.read_text())
    same = llm_settings(server, tmp_path, template=moved, base_url="http://127.0.0.1:1/v1")
    assert same.cache_fields() == settings.cache_fields()
    for change in ({"model": "other"}, {"temperature": 0.7}, {"n_descriptions": 2}):
        assert llm_settings(server, tmp_path, **change).cache_fields() != settings.cache_fields()
    moved.write_text("Other words about {class_name}.")
    assert same.cache_fields() != settings.cache_fields()


def test_bad_inputs_name_the_file_or_setting(server, tmp_path, monkeypatch):
    no_name = tmp_path / "published.csv"
    no_name.write_text("label,description_1\ndog,Barks.\n")
    with pytest.raises(ValueError, match=f"{no_name}.*'name' column"):
        generate_descriptions(classes("dog"), llm_settings(server, tmp_path, published_csv=no_name), tmp_path)

    no_placeholder = tmp_path / "bad_prompt.txt"
    no_placeholder.write_text("Describe the class.")
    with pytest.raises(ValueError, match=f"{no_placeholder}.*no {{class_name}} placeholder"):
        generate_descriptions(classes("dog"), llm_settings(server, tmp_path, template=no_placeholder), tmp_path)

    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(DescriptionError, match=r"needs an API key but \$OPENAI_API_KEY is not set"):
        generate_descriptions(classes("dog"), llm_settings(server, tmp_path), tmp_path)
    with pytest.raises(ValueError, match="mode must be one of"):
        DescriptionSettings(mode="gpt")
    assert server.requests == []
