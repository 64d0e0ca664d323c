from calmesh_common.rows import same_named


def test_same_named_takes_just_the_columns_asked_for() -> None:
    row = {"id": "b1", "status": "confirmed", "start_at": 1}
    assert same_named(row, "id", "status") == {"id": "b1", "status": "confirmed"}
