from suite_agent.config.models import ServiceSpec
from suite_agent.core.plan import Add, Remove, Replace, Scale, Update, plan


def spec(**kw: object) -> ServiceSpec:
    return ServiceSpec.model_validate({"command": ["sleep", "100"], **kw})


def test_nothing_to_do_when_declared_equals_actual() -> None:
    services = {"a": spec(), "b": spec(replicas=2)}
    assert plan(services, dict(services)) == []


def test_new_service_is_added_and_removed_service_removed() -> None:
    assert plan({"new": spec()}, {"old": spec()}) == [Remove("old"), Add("new", spec())]


def test_command_change_replaces_only_that_service() -> None:
    actual = {"a": spec(), "b": spec()}
    declared = {"a": spec(command="sleep 200"), "b": spec()}
    assert plan(declared, actual) == [Replace("a", declared["a"])]


def test_each_process_field_replaces() -> None:
    for change in ({"directory": "/tmp"}, {"environment": {"X": "1"}}, {"user": "nobody"}, {"group": "nogroup"}):
        new = spec(**change)
        assert plan({"a": new}, {"a": spec()}) == [Replace("a", new)], change


def test_replicas_only_scales() -> None:
    new = spec(replicas=3)
    assert plan({"a": new}, {"a": spec()}) == [Scale("a", new)]


def test_replicas_with_command_change_replaces() -> None:
    new = spec(replicas=3, command="sleep 5")
    assert plan({"a": new}, {"a": spec()}) == [Replace("a", new)]


def test_policy_change_updates_in_place() -> None:
    new = spec(restart="always", stop={"timeout": "1s"})
    assert plan({"a": new}, {"a": spec()}) == [Update("a", new)]


def test_added_services_come_after_their_dependencies() -> None:
    declared = {"app": spec(depends_on=["db"]), "db": spec(), "web": spec(depends_on=["app"])}
    assert [a.name for a in plan(declared, {})] == ["db", "app", "web"]


def test_removed_services_go_before_their_dependencies() -> None:
    actual = {"app": spec(depends_on=["db"]), "db": spec()}
    assert [a.name for a in plan({}, actual)] == ["app", "db"]


def test_removals_come_first() -> None:
    actions = plan({"b": spec(), "c": spec(command="x")}, {"a": spec(), "c": spec()})
    assert [type(a) for a in actions] == [Remove, Replace, Add]
