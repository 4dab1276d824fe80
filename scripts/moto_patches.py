"""Speed-ups for moto's server that the local AWS endpoint applies at start
(docs/local-stack.md, "The local AWS endpoint"; the same changes written into moto itself, for
upstream: docs/moto-sqs-speedups.patch).

moto's SQS model costs grow with queue depth: every SendMessage builds all
queue attributes (three scans of every message) to read one flag, every
received message does it again for the retention check, each scan reads the
clock twice per message through a helper that builds datetimes, a delete
scans the queue twice building lists, and a receipt handle is 185 separate
random draws. Per request, the dispatcher matches ~170 URL patterns (and
lists moto's package directory) under a global lock and lists the response
class's methods. Each replacement below keeps moto's behaviour and removes
that work. Two also close races of the threaded server: a delete rebuilt the
message list unlocked (losing a message sent meanwhile, or bringing back one
deleted meanwhile), and two receives could take the same message.

A patch is applied only while the function it replaces is exactly the source
it was written against (its SHA-256): after an upgrade that changed it, moto
is served without that patch, slower but correct, `apply()` logs which it
left out, and test_every_speed_up_matches_the_pinned_moto fails until this
file is brought up to date.
"""
import copy
import functools
import hashlib
import inspect
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

log = logging.getLogger("moto_patches")

WRITTEN_FOR = "moto 5.2.5"
# fingerprint() of the source each patch replaces, in WRITTEN_FOR.
EXPECTED = {
    "clock": "f0576ec9e5f586e5",
    "clock_ms": "7a37e1337d02962e",
    "visible_messages": "03a531dbcbcf9aee",
    "count_delayed": "c3c1dadb0c42ed5f",
    "count_not_visible": "5dbecc4dda174358",
    "count_visible": "d357a9506a56d2f8",
    "delete_message": "fa6fd5b9bd2cafb4",
    "retention_check": "cca23b94a5f3af9d",
    "receive_message": "065f3e5e7d214408",
    "send_message": "bf161af09a9e6b86",
    "untracked_messages": "08cf0ef20e88029a",
    "message_copy": "absent",  # moto's Message has no __deepcopy__ of its own
    "backend_for_host": "1f41972c1e4e660f",
    "receipt_handle": "10853f98152c8dab",
    "random_string": "942eb93ebea1f80a",
    "key_candidates": "c15da8ec29c1afa4",
    "method_names": "9dbac89d082b655f",
}


def fingerprint(func):
    """First 16 hex digits of the SHA-256 of a function's source; "absent" for None."""
    return "absent" if func is None else hashlib.sha256(inspect.getsource(func).encode()).hexdigest()[:16]


def _unix_time(dt=None):
    # moto's version builds two datetimes per call; with no argument it is just the wall clock.
    return time.time() if dt is None else _ORIGINAL["unix_time"](dt)


def _unix_time_millis(dt=None):
    return time.time() * 1000.0 if dt is None else _ORIGINAL["unix_time"](dt) * 1000.0


def _messages(self):
    now = time.time() * 1000.0
    return [m for m in self._messages if m.visible_at < now and m.delayed_until <= now]


def _approximate_number_of_messages_delayed(self):
    now = time.time() * 1000.0
    return sum(1 for m in self._messages if now < m.delayed_until)


def _approximate_number_of_messages_not_visible(self):
    now = time.time() * 1000.0
    return sum(1 for m in self._messages if not now > m.visible_at)


def _approximate_number_of_messages(self):
    return len(_messages(self))


def _queue_delete_message(self, receipt_handle):
    from moto.sqs.exceptions import ReceiptHandleIsInvalid

    if receipt_handle in self.deleted_messages:
        return  # already deleted: SQS accepts it again
    # Under the lock that add_message holds: moto builds the new list unlocked,
    # so a message sent (or another deleted) meanwhile was lost (or came back).
    with self._messages_lock:
        for index, message in enumerate(self._messages):
            if message.receipt_handle == receipt_handle or receipt_handle in message._old_receipt_handles:
                self.pending_messages.discard(message)
                self.deleted_messages.update(message.all_receipt_handles)
                # A new list, as moto does: a receive iterating the old one is not disturbed.
                self._messages = self._messages[:index] + self._messages[index + 1:]
                return
    raise ReceiptHandleIsInvalid()


def _is_message_valid_based_on_retention_period(self, queue_name, message):
    queue = self.get_queue(queue_name)
    return int(queue.message_retention_period) + message.sent_timestamp / 1000 > time.time()


def _send_message(self, queue_name, message_body, message_attributes=None, delay_seconds=None,
                  deduplication_id=None, group_id=None, system_attributes=None, validate_group_id=True):
    # moto's send_message, reading the queue's ContentBasedDeduplication flag
    # directly instead of through `queue.attributes` (which counts every message).
    import hashlib as _hashlib
    import string

    from moto.moto_api._internal import mock_random as random
    from moto.sqs.exceptions import InvalidParameterValue
    from moto.sqs.models import MAXIMUM_MESSAGE_DELAY, Message

    queue = self.get_queue(queue_name)
    self._validate_message(queue, message_body=message_body, delay_seconds=int(delay_seconds or 0),
                           deduplication_id=deduplication_id, group_id=group_id,
                           validate_group_id=validate_group_id)
    delay_seconds = int(delay_seconds) if delay_seconds is not None else queue.delay_seconds
    message = Message(str(random.uuid4()), message_body, system_attributes)
    if queue.fifo_queue and queue.content_based_deduplication:
        message.deduplication_id = _hashlib.sha256(message_body.encode("utf-8")).hexdigest()
    if deduplication_id is not None:
        message.deduplication_id = deduplication_id
        message.sequence_number = "".join(random.choice(string.digits) for _ in range(20))
    if group_id is not None:
        message.group_id = group_id
    if message_attributes:
        message.message_attributes = message_attributes
    if delay_seconds > MAXIMUM_MESSAGE_DELAY:
        raise InvalidParameterValue(f"Value {delay_seconds} for parameter DelaySeconds is invalid. "
                                    "Reason: DelaySeconds must be >= 0 and <= 900.")
    message.mark_sent(delay_seconds=delay_seconds)
    queue.add_message(message)
    return message


_LETTERS = bytes(ord("a") + b % 26 for b in range(256))


def _receipt_handle():
    # 185 lowercase letters, as moto makes them, from one draw of moto's (seedable) random.
    from moto.moto_api._internal import mock_random

    return mock_random.getrandbits(185 * 8).to_bytes(185, "little").translate(_LETTERS).decode()


def _message_copy(self, memo):
    # ReceiveMessage copies each message so that filtering its attributes for the
    # answer leaves the stored one alone; that needs new containers, not a deep walk.
    clone = copy.copy(self)
    clone.message_attributes = dict(self.message_attributes)
    clone.system_attributes = dict(self.system_attributes)
    clone._old_receipt_handles = list(self._old_receipt_handles)
    return clone


def _get_random_string(self, length=20, include_digits=True, lower_case=False):
    import string

    pool = string.ascii_letters + (string.digits if include_digits else "")
    random_str = "".join(self.choices(pool, k=length))
    return random_str.lower() if lower_case else random_str


def _cached_backend_for_host(original):
    # Which backend serves a host name is fixed once the server runs; moto
    # tries ~170 URL patterns one after another for every request.
    cache = {}

    @functools.wraps(original)
    def get_backend_for_host(self, host):
        if host not in cache:
            cache[host] = original(self, host)
        return cache[host]

    return get_backend_for_host


def _locked_receive(original):
    # moto checks that a message is visible and marks it received in two steps
    # with no lock, so two concurrent receives could both take it; it also
    # moves messages to the DLQ unlocked. One receive at a time per queue, under
    # the queue's lock (an RLock: the long-poll wait inside releases it).
    @functools.wraps(original)
    def receive_message(self, queue_name, *args, **kwargs):
        with self.get_queue(queue_name)._messages_lock:
            return original(self, queue_name, *args, **kwargs)

    return receive_message


def _cached_key_candidates(get_value):
    """AttributePicker.__call__ with the attribute names it tries remembered: they
    depend only on the picker, the value's class, the key and the (long-lived)
    botocore shape and its parent, and working them out runs four alias
    providers per field of every response."""
    from moto.core.serialize import MISSING

    candidates = {}

    def __call__(self, context):
        obj = context.obj
        if "Meta" in getattr(obj, "__dict__", ()):  # per-instance aliases: work them out each time
            keys = tuple(self.get_possible_keys(context))
        else:
            shape = context.shape
            cache_key = (type(self), tuple(self.alias_providers), type(obj), context.key, shape,
                         getattr(shape, "parent", None))
            keys = candidates.get(cache_key)
            if keys is None:
                keys = candidates[cache_key] = tuple(self.get_possible_keys(context))
        for possible_key in keys:
            value = get_value(obj, possible_key, MISSING)
            if value is not MISSING:
                break
        else:
            value = None
        key_path = f"{context.key_path}.{context.key}"
        for transform_path, transform in self.response_transformers.items():
            if key_path.endswith(transform_path):
                value = transform(value)
                break
        return value

    return __call__


class _Untracked(list):
    """moto keeps every model instance for its /moto-api dashboard; SQS messages
    (and each copy a receive makes) would pile up there for the server's life."""

    def append(self, item):
        pass


@dataclass(frozen=True)
class Patch:
    name: str
    owner: Any            # module or class holding the attribute
    attribute: str
    original_source: Callable | None  # function whose source must be unchanged (None: must not exist)
    replacement: Any


_ORIGINAL = {}


def patches():
    import moto.core.responses
    import moto.core.serialize
    import moto.core.utils
    import moto.sqs.models as sqs
    import moto.sqs.utils
    from moto.core.common_models import BaseModel
    from moto.moto_api._internal.moto_random import MotoRandom
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication as Dispatcher

    Queue, Backend = sqs.Queue, sqs.SQSBackend
    _ORIGINAL["unix_time"] = moto.core.utils.unix_time
    return [
        Patch("message_copy", sqs.Message, "__deepcopy__", getattr(sqs.Message, "__deepcopy__", None), _message_copy),
        Patch("untracked_messages", sqs.Message, "instances_tracked", BaseModel.__new__, _Untracked()),
        Patch("clock", sqs, "unix_time", moto.core.utils.unix_time, _unix_time),
        Patch("clock_ms", sqs, "unix_time_millis", moto.core.utils.unix_time_millis,
              _unix_time_millis),
        Patch("visible_messages", Queue, "messages", Queue.messages.fget, property(_messages)),
        Patch("count_delayed", Queue, "approximate_number_of_messages_delayed",
              Queue.approximate_number_of_messages_delayed.fget, property(_approximate_number_of_messages_delayed)),
        Patch("count_not_visible", Queue, "approximate_number_of_messages_not_visible",
              Queue.approximate_number_of_messages_not_visible.fget,
              property(_approximate_number_of_messages_not_visible)),
        Patch("count_visible", Queue, "approximate_number_of_messages", Queue.approximate_number_of_messages.fget,
              property(_approximate_number_of_messages)),
        Patch("delete_message", Queue, "delete_message", Queue.delete_message, _queue_delete_message),
        Patch("retention_check", Backend, "is_message_valid_based_on_retention_period",
              Backend.is_message_valid_based_on_retention_period, _is_message_valid_based_on_retention_period),
        Patch("receive_message", Backend, "receive_message", Backend.receive_message,
              _locked_receive(Backend.receive_message)),
        Patch("send_message", Backend, "send_message", Backend.send_message, _send_message),
        Patch("backend_for_host", Dispatcher, "get_backend_for_host", Dispatcher.get_backend_for_host,
              _cached_backend_for_host(Dispatcher.get_backend_for_host)),
        Patch("receipt_handle", sqs, "generate_receipt_handle", moto.sqs.utils.generate_receipt_handle,
              _receipt_handle),
        Patch("random_string", MotoRandom, "get_random_string", MotoRandom.get_random_string, _get_random_string),
        Patch("key_candidates", moto.core.serialize.AttributePicker, "__call__",
              moto.core.serialize.AttributePicker.__call__, _cached_key_candidates(moto.core.serialize.get_value)),
        # A response class's methods do not change while the server runs.
        Patch("method_names", moto.core.responses, "method_names_from_class", moto.core.utils.method_names_from_class,
              functools.lru_cache(maxsize=None)(moto.core.utils.method_names_from_class)),
    ]


def stale():
    """Names of the patches whose target in the installed moto is not the source they were written for."""
    return [p.name for p in patches() if fingerprint(p.original_source) != EXPECTED[p.name]]


def apply():
    """Apply every patch whose target is unchanged; returns (applied, skipped) names."""
    import moto

    applied, skipped = [], []
    for patch in patches():
        if fingerprint(patch.original_source) != EXPECTED[patch.name]:
            skipped.append(patch.name)
            continue
        setattr(patch.owner, patch.attribute, patch.replacement)
        applied.append(patch.name)
    if skipped:
        log.warning("moto %s: left unpatched (its code differs from %s): %s; see scripts/moto_patches.py",
                    moto.__version__, WRITTEN_FOR, ", ".join(skipped))
    return applied, skipped
