"""The registry: who listens to what, in which order, with which options."""

import functools
from dataclasses import dataclass
from typing import Annotated, Any, Protocol, TypeVar

import pytest

from messagio import (
    TASK_PRIORITY,
    AbstractMessageCenter,
    MessageCenter,
    Messagio,
    autodiscover_listeners,
    listen_to_message,
)
from messagio.registry import registry


@dataclass
class PerformAction(Messagio):
    action_name: str
    obj: object = None


class ActionPerformed(Messagio):
    def __init__(self, action_name: str, obj: object = None):
        self.action_name = action_name
        self.obj = obj


def listener_a(msg):
    return "a"


def listener_b(msg):
    return "b"


def listener_c(msg):
    return "c"


def test_decorator_returns_the_function_unchanged_and_registers_it_for_each_type():
    def handler(msg):
        return msg.action_name

    decorated = listen_to_message(PerformAction, ActionPerformed)(handler)

    assert decorated is handler
    assert decorated(PerformAction("x")) == "x"
    assert [s.listener for s in registry.subscriptions_for(PerformAction)] == [handler]
    assert [s.listener for s in registry.subscriptions_for(ActionPerformed)] == [handler]


def test_subscriptions_keep_the_order_they_were_made_in():
    for listener in (listener_b, listener_a, listener_c):
        MessageCenter.singleton().subscribe(PerformAction, listener)

    assert [s.listener for s in registry.subscriptions_for(PerformAction)] == [
        listener_b,
        listener_a,
        listener_c,
    ]


def test_options_belong_to_each_subscription_not_to_the_type():
    listen_to_message(PerformAction, priority=TASK_PRIORITY.HIGH, autoretry_for=(KeyError,))(
        listener_a
    )
    listen_to_message(PerformAction, priority=1, max_retries=7, default_retry_delay=2.5)(listener_b)

    a, b = registry.subscriptions_for(PerformAction)
    assert (a.priority, a.autoretry_for, a.max_retries) == (9, (KeyError,), None)
    assert (b.priority, b.autoretry_for, b.max_retries, b.default_retry_delay) == (1, (), 7, 2.5)


def test_one_listener_keeps_separate_options_per_type():
    listen_to_message(PerformAction, priority=10)(listener_a)
    listen_to_message(ActionPerformed, priority=0)(listener_a)

    assert registry.subscriptions_for(PerformAction)[0].priority == 10
    assert registry.subscriptions_for(ActionPerformed)[0].priority == 0


def test_subscribing_the_same_function_twice_is_a_no_op():
    first = MessageCenter.singleton().subscribe(PerformAction, listener_a, priority=3)
    again = MessageCenter.singleton().subscribe(PerformAction, listener_a, priority=9)

    assert again is first
    assert len(registry.subscriptions_for(PerformAction)) == 1


def test_unsubscribe_removes_only_that_subscription():
    center = MessageCenter.singleton()
    center.subscribe(PerformAction, listener_a)
    center.subscribe(PerformAction, listener_b)
    center.subscribe(ActionPerformed, listener_a)

    assert center.unsubscribe(PerformAction, listener_a) is True
    assert center.unsubscribe(PerformAction, listener_a) is False
    assert [s.listener for s in registry.subscriptions_for(PerformAction)] == [listener_b]
    assert [s.listener for s in registry.subscriptions_for(ActionPerformed)] == [listener_a]
    assert registry.get_listener("tests.test_registry.listener_a") is listener_a


def test_listener_id_is_the_dotted_path_unless_named():
    plain = MessageCenter.singleton().subscribe(PerformAction, listener_a)
    named = MessageCenter.singleton().subscribe(PerformAction, listener_b, name="billing.notify")

    assert plain.listener_id == "tests.test_registry.listener_a"
    assert plain.import_path == "tests.test_registry:listener_a"
    assert named.listener_id == "billing.notify"
    assert registry.get_listener("billing.notify") is listener_b


def test_two_functions_with_one_id_is_an_error_that_says_how_to_fix_it():
    MessageCenter.singleton().subscribe(PerformAction, listener_a, name="shared")

    with pytest.raises(ValueError, match=r"share the id 'shared'.*name="):
        MessageCenter.singleton().subscribe(ActionPerformed, listener_b, name="shared")


def test_two_listeners_of_one_name_in_one_module_need_a_name_for_the_second():
    """0.x subscribed both; now they would share a dotted path, so the second is refused
    until name= gives it an id of its own (as the Upgrading section of the README says)."""

    @listen_to_message(PerformAction)
    def on_action(msg):
        return "first"

    with pytest.raises(ValueError, match=r"Two different listeners share the id .*name="):

        @listen_to_message(ActionPerformed)
        def on_action(msg):  # noqa: F811
            return "second"

    @listen_to_message(ActionPerformed, name="tests.on_action_2")
    def on_action(msg):  # noqa: F811
        return "second"

    assert registry.subscriptions_for(ActionPerformed)[0].listener_id == "tests.on_action_2"


@pytest.mark.parametrize("priority", [11, 255, -1])
def test_a_priority_outside_0_to_10_that_0x_passed_on_to_celery_is_refused(priority):
    with pytest.raises(TypeError, match=r"priority must be an int from 0 to 10"):
        listen_to_message(PerformAction, priority=priority)(listener_a)


def test_subscribing_a_class_that_is_not_a_messagio_raises_type_error_naming_both():
    class NotAMessagio:
        pass

    with pytest.raises(TypeError) as error:

        @listen_to_message(NotAMessagio)
        def handler(msg):
            pass

    assert "NotAMessagio" in str(error.value)
    assert "handler" in str(error.value)
    assert "Messagio" in str(error.value)


def test_subscribing_a_non_callable_raises_type_error_naming_both():
    with pytest.raises(TypeError) as error:
        MessageCenter.singleton().subscribe(PerformAction, "not a function")

    assert "'not a function'" in str(error.value)
    assert "PerformAction" in str(error.value)


def test_decorator_used_without_types_raises_type_error():
    with pytest.raises(TypeError, match="at least one Messagio"):
        listen_to_message()


def test_decorator_used_bare_raises_type_error():
    with pytest.raises(TypeError, match="is not a class that extends messagio.Messagio"):

        @listen_to_message
        def handler(msg):
            pass


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"priority": 11}, "priority must be an int from 0 to 10"),
        ({"priority": "high"}, "priority must be an int"),
        ({"autoretry_for": ("ValueError",)}, "autoretry_for must hold exception classes"),
        ({"autoretry_for": "ConnectionError"}, "not 'ConnectionError': pass the classes"),
        ({"autoretry_for": ConnectionError()}, "not ConnectionError\\(\\): pass the classes"),
        ({"autoretry_for": 3}, "autoretry_for must be exception classes, not 3"),
        ({"max_retries": -1}, "max_retries must be an int >= 0"),
        ({"default_retry_delay": "soon"}, "default_retry_delay must be a finite number"),
        ({"default_retry_delay": float("nan")}, "default_retry_delay must be a finite number"),
        ({"queue": ""}, "queue must be a non-empty queue name"),
        ({"time_limit": 0}, "time_limit must be a finite number of seconds > 0"),
        ({"time_limit": float("inf")}, "time_limit must be a finite number of seconds > 0"),
    ],
)
def test_bad_options_raise_type_error_at_subscription(options, message):
    with pytest.raises(TypeError, match=message):
        listen_to_message(PerformAction, **options)(listener_a)


#: A messagio class whose dotted path is longer than the records hold.
LongNamed = type("Long" + "d" * 260, (Messagio,), {})


@pytest.mark.parametrize(
    ("messagio_type", "options", "message"),
    [
        (PerformAction, {"name": "x" * 256}, "its id is 256 characters long"),
        (PerformAction, {"queue": "q" * 201}, "the queue name is 201 characters long"),
        (LongNamed, {}, "the messagio type's dotted path is"),
    ],
    ids=["listener id", "queue", "messagio type"],
)
def test_a_name_longer_than_the_records_hold_is_refused_at_subscription(
    messagio_type, options, message
):
    # Else the worker's first write of the group's rows fails, and the group is lost.
    with pytest.raises(ValueError, match=message):
        listen_to_message(messagio_type, **options)(listener_a)
    assert not any(s.listener is listener_a for s in registry.subscriptions_for(messagio_type))


def test_the_length_limits_are_the_records_columns():
    from messagio.models import Delivery
    from messagio.registry import NAME_MAX_LENGTH, QUEUE_MAX_LENGTH

    field = Delivery._meta.get_field
    assert {field(name).max_length for name in ("listener", "import_path", "messagio_type")} == {
        NAME_MAX_LENGTH
    }
    assert field("queue").max_length == QUEUE_MAX_LENGTH


async def listener_async(msg):
    pass


def listener_generator(msg):
    yield msg


async def listener_async_generator(msg):
    yield msg


class AsyncCallable:
    async def __call__(self, msg):
        pass


@pytest.mark.parametrize(
    "listener",
    [listener_async, listener_generator, listener_async_generator, AsyncCallable()],
    ids=["async", "generator", "async generator", "async __call__"],
)
def test_a_listener_that_runs_nothing_when_called_is_refused_at_subscription(listener):
    # Called, it returns a coroutine or a generator: recorded succeeded, its body never run.
    with pytest.raises(TypeError, match="is an async function or a generator"):
        listen_to_message(PerformAction)(listener)
    assert not any(s.listener is listener for s in registry.subscriptions_for(PerformAction))


#: An exception class made at run time, as some client libraries make theirs: its module
#: does not hold it under its name, so a worker could not import it to retry on it.
Throttled = type("ThrottlingException", (Exception,), {"__module__": __name__})


def local_exception_class() -> type[Exception]:
    class Local(Exception):
        pass

    return Local


@pytest.mark.parametrize(
    "exc_type", [Throttled, local_exception_class()], ids=["made at run time", "local"]
)
def test_an_autoretry_for_class_a_worker_cannot_import_is_refused_at_subscription(exc_type):
    # Else it is retried in tests and sync fires, and never in a worker.
    with pytest.raises(TypeError, match="which a worker cannot find by its path"):
        listen_to_message(PerformAction, autoretry_for=(OSError, exc_type))(listener_a)
    assert not any(s.listener is listener_a for s in registry.subscriptions_for(PerformAction))


def listener_of_two_arguments(msg, request):
    pass


class Handlers:
    def on_action(self, msg):
        pass


@pytest.mark.parametrize(
    "listener", [listener_of_two_arguments, Handlers.on_action], ids=["two", "unbound method"]
)
def test_a_listener_that_cannot_take_the_messagio_alone_is_refused_at_subscription(listener):
    with pytest.raises(TypeError, match="cannot be called with the messagio as its only arg"):
        listen_to_message(PerformAction)(listener)
    assert not any(s.listener is listener for s in registry.subscriptions_for(PerformAction))


def listens_to_the_other_one(msg: ActionPerformed):
    pass


def listens_to_one_of_two_others(msg: "ActionPerformed | None"):
    pass


class HandlersOfTheOther:
    def on_action(self, msg: ActionPerformed):
        pass


@pytest.mark.parametrize(
    "listener",
    [listens_to_the_other_one, listens_to_one_of_two_others, HandlersOfTheOther().on_action],
    ids=["class", "union in a string", "bound method"],
)
def test_a_listener_annotated_with_another_type_is_refused_at_subscription(listener):
    # Else it is called, in a worker, with an instance of a type it says it never takes.
    with pytest.raises(
        TypeError,
        match=r"its parameter `msg` is annotated `ActionPerformed( \| None)?`, which "
        r"tests\.test_registry\.PerformAction is not",
    ):
        listen_to_message(PerformAction)(listener)
    assert not any(s.listener is listener for s in registry.subscriptions_for(PerformAction))


def returns_what_is_imported_only_for_type_checkers(msg: ActionPerformed) -> "Receipt":  # noqa: F821
    pass


def test_a_listener_is_judged_by_its_parameter_whatever_else_it_annotates():
    with pytest.raises(TypeError, match="its parameter `msg` is annotated `ActionPerformed`"):
        listen_to_message(PerformAction)(returns_what_is_imported_only_for_type_checkers)


def test_a_listener_refused_for_one_of_its_types_is_subscribed_to_none_of_them():
    # Else its module's next import (autodiscovery tries again) says two listeners share its id.
    for _ in range(2):
        with pytest.raises(TypeError, match="is annotated `ActionPerformed`"):
            listen_to_message(ActionPerformed, PerformAction)(listens_to_the_other_one)
    assert not any(
        s.listener is listens_to_the_other_one for s in registry.subscriptions_for(ActionPerformed)
    )


class NamedAction(Protocol):
    action_name: str


Event = TypeVar("Event", bound=Messagio)


def listens_to_any(msg: Any):
    pass


def listens_to_all(msg: Messagio):
    pass


def listens_to_both(msg: PerformAction | ActionPerformed):
    pass


def listens_annotated(msg: Annotated[PerformAction, "documented"]):
    pass


def listens_by_protocol(msg: NamedAction):
    pass


def listens_by_type_variable(msg: Event) -> Event:
    return msg


def listens_to_a_name_not_yet_defined(msg: "DefinedLater"):  # noqa: F821
    pass


def listens_to_many(*messagios: PerformAction):
    pass


@pytest.mark.parametrize(
    "listener",
    [
        listens_to_any,
        listens_to_all,
        listens_to_both,
        listens_annotated,
        listens_by_protocol,
        listens_by_type_variable,
        listens_to_a_name_not_yet_defined,
        listens_to_many,
    ],
    ids=lambda listener: listener.__name__,
)
def test_a_listener_whose_annotation_accepts_the_type_or_cannot_be_judged_is_accepted(listener):
    subscription = MessageCenter.singleton().subscribe(PerformAction, listener)
    assert subscription.listener is listener


def fills_in_its_mailer(function):
    """A decorator that supplies an argument when called (dependency injection)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        return function(*args, mailer="the mailer", **kwargs)

    return wrapper


@fills_in_its_mailer
def listener_given_its_mailer(msg, mailer):
    return mailer


def test_a_decorated_listener_is_judged_by_the_wrapper_messagio_calls():
    subscription = MessageCenter.singleton().subscribe(PerformAction, listener_given_its_mailer)

    assert subscription.listener(PerformAction("x")) == "the mailer"


def test_a_listener_of_one_argument_and_keyword_defaults_is_accepted():
    def listener(msg, *, verbose=False, **extra):
        pass

    subscription = MessageCenter.singleton().subscribe(PerformAction, listener)
    assert subscription.listener is listener


def test_a_single_exception_class_is_accepted_for_autoretry_for():
    subscription = MessageCenter.singleton().subscribe(
        PerformAction, listener_a, autoretry_for=ConnectionError
    )
    assert subscription.autoretry_for == (ConnectionError,)


def test_get_name_is_the_dotted_path_of_the_class():
    assert PerformAction.get_name() == "tests.test_registry.PerformAction"
    assert PerformAction("x").get_name() == "tests.test_registry.PerformAction"


def test_task_priority_is_higher_for_more_important():
    assert [p.value for p in TASK_PRIORITY] == [0, 3, 5, 7, 9, 10]
    from messagio.const import TASK_PRIORITY as from_const

    assert from_const is TASK_PRIORITY


def test_messagio_imports_from_where_the_original_library_defined_it():
    from messagio import const
    from messagio.const import Messagio as from_const

    assert from_const is Messagio
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        const.Nothing  # noqa: B018


@pytest.mark.parametrize("module", ["__main__", "django.core.management.commands.shell"])
def test_a_listener_defined_in_a_script_or_a_shell_has_no_import_path_for_workers(module):
    def typed_in(event):
        return None

    typed_in.__module__, typed_in.__qualname__ = module, "typed_in"

    subscription = MessageCenter.singleton().subscribe(PerformAction, typed_in)

    assert subscription.listener_id == f"{module}.typed_in"
    assert subscription.import_path is None  # the worker says why, instead of failing to import


def test_a_worker_that_cannot_import_a_listener_says_where_it_must_be_defined():
    from messagio.dispatch import resolve_listener
    from messagio.exceptions import ListenerNotFoundError

    with pytest.raises(ListenerNotFoundError, match="defined in a shell or a script"):
        resolve_listener("django.core.management.commands.shell.typed_in", None)


@pytest.mark.parametrize(
    "module, name, same_as",
    [
        ("messagio.message_center", "MessageCenter", MessageCenter),
        ("messagio.abstract_message_center", "AbstractMessageCenter", AbstractMessageCenter),
        ("messagio.decorators", "listen_to_message", listen_to_message),
        ("messagio.autodiscover", "autodiscover_listeners", autodiscover_listeners),
    ],
)
def test_the_original_librarys_import_paths_still_import(module, name, same_as):
    import importlib

    assert getattr(importlib.import_module(module), name) is same_as
