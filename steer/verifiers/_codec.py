"""Values by value: the only shapes a program's inputs and outputs cross a process boundary in, standard library only.

``encode`` turns a plain value into JSON-able data; ``decode`` turns that data back, checking every node. Plain means
the exact built-in types, never a subclass (an ``int`` subclass with a permissive ``__eq__`` is refused, not
flattened): ``None``, ``bool``, ``int``, ``float`` (NaN and infinities included), ``str``, ``list``, and, tagged as
``{"t": TAG, "v": [...]}``, ``tuple``, ``dict`` (a list of ``[key, value]`` pairs), ``set`` and ``frozenset``.
Anything else raises ``TypeError`` (encode) or ``ValueError`` (decode).

The sandboxed harnesses get this file's text prepended to theirs (``steer.verifiers.code``), so the trusted side
(this module imported by the verifier) and the sandboxes share one format. In the candidate's process the candidate
can patch these functions; that only corrupts its own output, which the trusted side's ``decode`` re-validates.
"""

MAX_DEPTH = 100  # nesting deeper than this is refused (and cycles, which would recurse forever)
_TAGGED = ("tuple", "dict", "set", "frozenset")


def encode(x, depth=0):
    """JSON-able form of a plain value (see the module doc); ``TypeError`` on any other type or a subclass."""
    t = type(x)
    if depth > MAX_DEPTH:
        raise TypeError("value nested too deeply (or a cycle)")
    if x is None or t is bool or t is int or t is float or t is str:
        return x
    if t is list:
        return [encode(v, depth + 1) for v in x]
    if t is tuple or t is set or t is frozenset:
        return {"t": t.__name__, "v": [encode(v, depth + 1) for v in x]}
    if t is dict:
        return {"t": "dict", "v": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in x.items()]}
    raise TypeError("not a plain value (None, bool, int, float, str, list, tuple, dict, set or frozenset)")


def decode(data, depth=0):
    """The value ``data`` (parsed JSON) stands for; ``ValueError`` on anything ``encode`` cannot have produced."""
    t = type(data)
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    if data is None or t is bool or t is int or t is float or t is str:
        return data
    if t is list:
        return [decode(v, depth + 1) for v in data]
    if t is not dict or set(data) != {"t", "v"} or data["t"] not in _TAGGED or type(data["v"]) is not list:
        raise ValueError(f"not an encoded value: {str(data)[:80]}")
    items = [decode(v, depth + 1) for v in data["v"]]
    tag = data["t"]
    try:
        if tag == "tuple":
            return tuple(items)
        if tag == "dict":
            if not all(type(kv) is list and len(kv) == 2 for kv in items):
                raise ValueError("a dict is encoded as [key, value] pairs")
            out = dict((k, v) for k, v in items)
            if len(out) != len(items):
                raise ValueError("repeated dict key")
            return out
        out = set(items) if tag == "set" else frozenset(items)
    except TypeError as e:  # an unhashable key or member
        raise ValueError(f"bad {tag}: {e}") from None
    if len(out) != len(items):
        raise ValueError(f"repeated {tag} member")
    return out
