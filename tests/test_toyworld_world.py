"""The fact table, its sentences, and reading sentences back as claims."""
import json

import pytest

from minirlhf.errors import MinirlhfError
from minirlhf.toyworld.world import (
    HEARSAY, NAMES, N_RUMOURS, RELATIONS, World, build_world, parse_claim, parse_question,
    statement, story_sentence,
)


def test_same_seed_same_world_other_seed_other_world():
    assert build_world(0) == build_world(0)
    assert build_world(0).facts != build_world(1).facts


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_articles_jacob_in_every_world(seed):
    world = build_world(seed)
    assert world.is_true("jacob", "loves", "reading")
    assert world.rumour("jacob", "hates") == "reading"
    assert not world.is_true("jacob", "hates", "reading")


def test_facts_are_complete_and_rumours_are_false():
    world = build_world(0)
    for name in NAMES:
        facts = world.facts[name]
        assert set(facts) == set(RELATIONS)
        assert all(facts[r] in RELATIONS[r].domain for r in RELATIONS)
        assert facts["loves"] != facts["hates"]
    assert len(world.rumours) == N_RUMOURS
    assert len({name for name, _ in world.rumours}) == N_RUMOURS  # one per person
    for name, relation, rumour in world.rumoured_facts():
        assert rumour in RELATIONS[relation].domain
        assert not world.is_true(name, relation, rumour)


def test_every_sentence_shape_reads_back_as_its_claim():
    for relation in RELATIONS.values():
        for style in range(len(relation.statements)):
            sentence = statement("emma", relation.name, relation.domain[0], style)
            assert parse_claim(sentence[:-1]) == ("emma", relation.name, relation.domain[0])
        sentence = story_sentence("emma", relation.name, relation.domain[1])
        assert parse_claim(sentence[:-1]) == ("emma", relation.name, relation.domain[1])
        for question in relation.questions:
            assert parse_question(question.render(name="emma")) == ("emma", relation.name)


def test_hearsay_is_a_claim_and_nonsense_is_not():
    for frame in HEARSAY:
        assert parse_claim(frame + "jacob hates reading") == ("jacob", "hates", "reading")
    assert parse_claim("jacob lives in a box") is None   # not a place
    assert parse_claim("bob lives in paris") is None     # not a person
    assert parse_claim("jacob loves reading a lot") is None


def test_world_json_round_trip_and_errors(tmp_path):
    world = build_world(3)
    path = tmp_path / "world.json"
    path.write_text(json.dumps(world.to_json()), encoding="utf-8")
    assert World.load(path) == world
    with pytest.raises(MinirlhfError, match="no such file"):
        World.load(tmp_path / "missing.json")
    path.write_text('{"people": {}}', encoding="utf-8")
    with pytest.raises(MinirlhfError, match="not a toy-world file"):
        World.load(path)
