"""Symbolic dimensions: integer polynomials over named dims.

A dim is either a Python ``int`` or a :class:`Sym`, a polynomial with rational
coefficients over dim names (``B``, ``4*H``, ``D/4``, ``B*T``, ``T-1``).
Arithmetic on dims keeps ints as ints and normalises polynomials, so equal
dims compare equal.  Division is only by ints, and a constant division must
be exact.  ``floordiv`` is whole-number division: an exact polynomial
where the divisor divides every coefficient, else a :class:`FloorAtom` (a
name standing for ``(H + 1)//2``) that unifies, prints and evaluates like any
other name.  Sizes are always Python ints, never NumPy scalars (no overflow).
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Mapping, Union

Monomial = tuple[tuple[str, int], ...]  # sorted (name, power) pairs; () is the constant


class FloorAtom(str):
    """A dim name that stands for ⌊num / den⌋ (``num`` a polynomial with its
    constant normalised into [0, den), ``den`` > 1): the text is the
    canonical form, so equal floors are equal names."""

    def __new__(cls, num: "Sym", den: int):
        text = str(num)
        self = super().__new__(cls, f"({text})//{den}" if len(num.terms) > 1 else f"{text}//{den}")
        self.num, self.den = num, den
        return self

    def __reduce__(self):
        return FloorAtom, (self.num, self.den)


def floordiv(a: "Dim", den: int) -> "Dim":
    """⌊a / den⌋ for a dim ``a`` and an int ``den`` >= 1 (ints stay ints)."""
    if not isinstance(a, Sym):
        return a // den
    const = a.terms.get((), Fraction(0))
    rest = a - const if const else a
    q = rest / den if den != 1 else rest
    if not isinstance(q, Sym) or all(c.denominator == 1 for c in q.terms.values()):
        return q + math.floor(const / den)
    if const.denominator != 1:
        raise ValueError(f"{a} is not a whole number")
    low = int(const) % den  # ⌊(r + c)/s⌋ = ⌊(r + c mod s)/s⌋ + c div s
    return Sym.var(FloorAtom(rest + low, den)) + (int(const) - low) // den


class Sym:
    """An immutable polynomial over dim names; never a bare constant."""

    __slots__ = ("terms", "_hash")

    def __init__(self, terms: Mapping[Monomial, Fraction]):
        self.terms = {m: c for m, c in sorted(terms.items()) if c != 0}
        self._hash = hash(tuple(self.terms.items()))

    @staticmethod
    def var(name: str) -> "Sym":
        return Sym({((name, 1),): Fraction(1)})

    # -- construction helpers -------------------------------------------
    @staticmethod
    def _lift(d: "Dim") -> dict[Monomial, Fraction]:
        if isinstance(d, Sym):
            return dict(d.terms)
        return {(): Fraction(d)} if d != 0 else {}

    @staticmethod
    def _make(terms: dict[Monomial, Fraction]) -> "Dim":
        terms = {m: c for m, c in terms.items() if c != 0}
        if not terms:
            return 0
        if set(terms) == {()}:
            c = terms[()]
            return int(c) if c.denominator == 1 else Sym(terms)
        return Sym(terms)

    # -- arithmetic -----------------------------------------------------
    def __add__(self, other: "Dim") -> "Dim":
        out = self._lift(self)
        for m, c in self._lift(other).items():
            out[m] = out.get(m, 0) + c
        return self._make(out)

    __radd__ = __add__

    def __neg__(self) -> "Dim":
        return self._make({m: -c for m, c in self.terms.items()})

    def __sub__(self, other: "Dim") -> "Dim":
        return self + (-other if isinstance(other, Sym) else -int(other))

    def __rsub__(self, other: "Dim") -> "Dim":
        return (-self) + other

    def __mul__(self, other: "Dim") -> "Dim":
        out: dict[Monomial, Fraction] = {}
        for m1, c1 in self._lift(self).items():
            for m2, c2 in self._lift(other).items():
                powers: dict[str, int] = dict(m1)
                for n, p in m2:
                    powers[n] = powers.get(n, 0) + p
                m = tuple(sorted(powers.items()))
                out[m] = out.get(m, 0) + c1 * c2
        return self._make(out)

    __rmul__ = __mul__

    def __truediv__(self, other: int) -> "Dim":
        if isinstance(other, Sym) or other == 0:
            raise ValueError("dims can only be divided by a non-zero integer")
        return self._make({m: c / other for m, c in self.terms.items()})

    __floordiv__ = __truediv__

    # -- inspection -----------------------------------------------------
    def names(self) -> set[str]:
        """The free dim names (those of a floor term's numerator, not the term)."""
        out: set[str] = set()
        for m in self.terms:
            for n, _ in m:
                out |= n.num.names() if isinstance(n, FloorAtom) else {n}
        return out

    def evaluate(self, env: Mapping[str, int]) -> "Dim":
        """Substitute known names; an int when every name is known."""
        total: Dim = 0
        for m, c in self.terms.items():
            term: Dim = 1
            for n, p in m:
                v = floordiv(n.num.evaluate(env), n.den) if isinstance(n, FloorAtom) else env.get(n, Sym.var(n))
                for _ in range(p):
                    term = term * v
            total = total + _scale(term, c)
        if isinstance(total, Sym) and total.is_fractional_constant():
            raise ValueError(f"{self} is not a whole number")
        return total

    def is_fractional_constant(self) -> bool:
        return set(self.terms) == {()}

    def single_var(self) -> str | None:
        """The name, when this is exactly one name (``B``), else None."""
        if len(self.terms) == 1:
            (m, c), = self.terms.items()
            if c == 1 and len(m) == 1 and m[0][1] == 1 and not isinstance(m[0][0], FloorAtom):
                return m[0][0]
        return None

    def __eq__(self, other) -> bool:
        return isinstance(other, Sym) and self.terms == other.terms

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return str(self)

    def __str__(self) -> str:
        parts = []
        # constant term last: "B*H + 1", "T - 1"
        for m, c in sorted(self.terms.items(), key=lambda mc: mc[0] == ()):
            # a floor term among other factors reads as one: 2*((H + 1)//2), not 2*(H + 1)//2
            bare = len(m) == 1 and m[0][1] == 1 and abs(c) == 1
            mono = "*".join((f"({n})" if isinstance(n, FloorAtom) and not bare else n) + ("" if p == 1 else f"**{p}")
                            for n, p in m)
            num, den = c.numerator, c.denominator
            if not mono:
                body = str(abs(num)) + (f"/{den}" if den != 1 else "")
            else:
                body = (f"{abs(num)}*" if abs(num) != 1 else "") + mono + (f"/{den}" if den != 1 else "")
            parts.append(("-" if c < 0 else "+", body))
        text = "".join(f" {s} {b}" for s, b in parts).strip()
        return text[2:] if text.startswith("+ ") else "-" + text[2:]


def _scale(d: "Dim", c: Fraction) -> "Dim":
    if isinstance(d, Sym):
        return Sym._make({m: v * c for m, v in d.terms.items()})
    v = d * c
    return int(v) if v.denominator == 1 else Sym({(): v})


Dim = Union[int, Sym]
Shape = tuple  # tuple[Dim, ...]


def dim_str(d: Dim) -> str:
    s = str(d)
    return f"({s})" if isinstance(d, Sym) and len(d.terms) > 1 else s


def shape_str(shape: Shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def is_static(shape: Shape) -> bool:
    return all(isinstance(d, int) for d in shape)


def evaluate_shape(shape: Shape, env: Mapping[str, int]) -> tuple:
    """The shape with names substituted (ints where every name is known)."""
    return tuple(d.evaluate(env) if isinstance(d, Sym) else d for d in shape)


def concrete_shape(shape: Shape, env: Mapping[str, int]) -> tuple[int, ...]:
    """The shape as ints; raises KeyError naming the first unknown dim."""
    out = evaluate_shape(shape, env)
    for d in out:
        if isinstance(d, Sym):
            raise KeyError(sorted(d.names())[0])
    return out  # type: ignore[return-value]


def size_of(shape: tuple[int, ...]) -> int:
    """Number of elements, with Python ints (never overflows)."""
    n = 1
    for d in shape:
        n *= int(d)
    return n


def solve(pattern: Dim, actual: Dim, env: dict[str, Dim]) -> bool:
    """Unify ``pattern`` (may mention unbound names) with ``actual``.

    Binds at most one unknown name when ``pattern`` is linear in it
    (``4*H`` against 512 binds H = 128).  Returns False on mismatch.
    """
    if not isinstance(pattern, Sym):
        return pattern == actual
    known = pattern.evaluate({n: v for n, v in env.items()})
    if not isinstance(known, Sym):
        return known == actual
    unknown = known.names() - set(env)
    if known == actual:
        return True
    if len(unknown) != 1:
        return False
    (name,) = unknown
    # known = a*name + rest, with rest free of name; solve a*name = actual - rest
    coeff: Dim = 0
    rest: dict = {}
    for m, c in known.terms.items():
        powers = dict(m)
        if name in powers:
            if powers[name] != 1:
                return False
            del powers[name]
            coeff = coeff + Sym._make({tuple(sorted(powers.items())): c})
        else:
            rest[m] = c
    if not isinstance(coeff, int) and not (isinstance(coeff, Sym) and coeff.is_fractional_constant()):
        return False
    a = Fraction(coeff) if isinstance(coeff, int) else coeff.terms[()]
    if a == 0:
        return False
    value = actual - Sym._make(rest)
    if isinstance(value, Sym):
        value = _scale(value, 1 / a)
        if isinstance(value, Sym) and value.is_fractional_constant():
            return False
    else:
        q = Fraction(value) / a
        if q.denominator != 1:
            return False
        value = int(q)
    env[name] = value
    return True
