from calmesh_common.sqlwhere import Where


def test_conditions_given_number_their_parameters_after_the_fixed_ones() -> None:
    w = Where("user_id = $1", "kind = 'x'", args=["u1"])
    w.add_if(None, "status = {}")
    w.add_if("open", "status = {}")
    w.add_if(("2026-01-01", "id9"), "(start_at, id) > ({}, {})")
    limit = w.param(50)
    assert str(w) == "user_id = $1 AND kind = 'x' AND status = $2 AND (start_at, id) > ($3, $4)"
    assert limit == "$5"
    assert w.args == ["u1", "open", "2026-01-01", "id9", 50]
