"""Whether two measured results differ beyond noise: the one rule every comparison in minitune goes through.

A fine-tuning result is a random variable. The seed picks the initial trainable weights, the order of
the batches and dropout, so running the same setting again gives another number. A lesson therefore
runs each setting with several seeds and summarises them as a `SeedValues` (mean, sample sd, min, max, n).
Two settings differ beyond noise when a test says a gap that large would be rare if only the seed mattered:

    Welch's t (the default, on one value per seed)
        t  = (mean_a - mean_b) / sqrt(s_a^2 / n_a + s_b^2 / n_b)         s^2: sample variance, divisor n - 1
        df = (s_a^2/n_a + s_b^2/n_b)^2 / ((s_a^2/n_a)^2/(n_a - 1) + (s_b^2/n_b)^2/(n_b - 1))
        p  = P(|T_df| >= |t|)                                            two-sided

    Unlike Student's t it does not assume both settings are equally noisy (a large learning rate is
    often far noisier than a small one), and its degrees of freedom (Welch-Satterthwaite) shrink toward
    the noisier side's n - 1.

    two-proportion z (for accuracies over items: noise from which test items were drawn)
        p_pool = (k_a + k_b) / (n_a + n_b),   z = (k_a/n_a - k_b/n_b) / sqrt(p_pool (1 - p_pool) (1/n_a + 1/n_b))
        p      = P(|Z| >= |z|) = erfc(|z| / sqrt 2)

The rule: a difference is beyond noise when the two-sided p < ALPHA (0.05). Otherwise the two are "not
told apart by this design", which is not the same as being the same: with 3 seeds a side Welch's t
only detects gaps of about three standard deviations. So every such verdict prints the smallest gap
the design could have detected (`Comparison.smallest_gap`: the gap that would give p = ALPHA with the
spreads measured). Edge cases, decided once here:
  - fewer than 2 values on either side: there is no spread to test against, so no difference can be
    shown (p is nan and `beyond_noise` is False);
  - every seed gave the same value on both sides (both sds zero): equal means are no difference (p = 1);
    different means are beyond seed noise (p = 0), the limit of Welch's t as both spreads shrink. That
    says nothing about which test items were drawn; `proportions` tests that.
  - each test is taken on its own, at ALPHA: among twenty pairs of settings that truly do not differ,
    about one will be called different. A lesson that compares many pairs says so.

The t distribution's tail is computed here (no scipy): P(|T_df| >= |t|) = I_x(df/2, 1/2) with
x = df / (df + t^2), where I is the regularized incomplete beta function, evaluated by its continued
fraction (modified Lentz's method); near t = 0 the centre, P(|T_df| < |t|) = I_y(1/2, df/2) with
y = t^2 / (df + t^2), is computed instead, so neither is a difference of two nearly equal numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from minitune.errors import ConfigError

ALPHA = 0.05  # two-sided: a difference is beyond noise when p < ALPHA
NO_DIFFERENCE = "not told apart by this design"


# --- summaries of several seeds ---------------------------------------------------------------------------

@dataclass(frozen=True)
class SeedValues:
    """One setting measured over several seeds: the values, and their mean and spread."""

    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.values:
            raise ConfigError("a SeedValues needs at least one value")
        object.__setattr__(self, "values", tuple(float(v) for v in self.values))

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return math.fsum(self.values) / self.n

    @property
    def var(self) -> float:
        """Sample variance (divisor n - 1, unbiased); nan for a single value."""
        if self.n < 2:
            return math.nan
        m = self.mean
        return math.fsum((v - m) ** 2 for v in self.values) / (self.n - 1)

    @property
    def sd(self) -> float:
        """Sample standard deviation (divisor n - 1); nan for a single value."""
        return math.sqrt(self.var)

    @property
    def min(self) -> float:
        return min(self.values)

    @property
    def max(self) -> float:
        return max(self.values)

    def to_dict(self) -> dict:
        """What results.json keeps: every seed's value and the summary (sd None when undefined)."""
        return {"mean": self.mean, "sd": None if self.n < 2 else self.sd, "min": self.min, "max": self.max,
                "n": self.n, "values": list(self.values)}

    def __format__(self, spec: str) -> str:
        """'0.812 ± 0.021' (mean ± sd), each formatted with spec; the mean alone for one seed."""
        if not spec:
            spec = number_spec(self.mean)
        mean = format(self.mean, spec)
        return mean if self.n < 2 else f"{mean} ± {format(self.sd, spec)}"

    def __str__(self) -> str:
        return format(self, "")

    def range(self, spec: str = "") -> str:
        """'0.790-0.830': the smallest and largest seed."""
        spec = spec or number_spec(self.mean)
        return f"{format(self.min, spec)}-{format(self.max, spec)}"


def summarize(values: Sequence[float] | SeedValues) -> SeedValues:
    """A SeedValues of per-seed values (a SeedValues is returned as it is)."""
    return values if isinstance(values, SeedValues) else SeedValues(tuple(values))


def number_spec(x: float) -> str:
    """Three decimals for numbers below 10 (accuracies, losses), one below 1000, none above; numbers
    under 0.01 (a loss near zero) in exponent form, so 0.0004 does not print as 0.000."""
    a = abs(x)
    if 0 < a < 0.01:
        return ".2e"
    return ".3f" if a < 10 or math.isnan(a) else ".1f" if a < 1000 else ",.0f"


# --- the t distribution ----------------------------------------------------------------------------------

def _beta_fraction(a: float, b: float, x: float, eps: float = 1e-15, max_terms: int = 10_000) -> float:
    """The continued fraction of I_x(a, b) (without its prefactor), by modified Lentz's method."""
    tiny = 1e-300  # stands in for a zero denominator, so the recurrence never divides by 0

    def guard(v: float) -> float:
        return tiny if abs(v) < tiny else v

    c, d = 1.0, 1.0 / guard(1.0 - (a + b) * x / (a + 1.0))
    h = d
    for m in range(1, max_terms + 1):
        # even step: coefficient m (b - m) x / ((a + 2m - 1)(a + 2m))
        k = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 / guard(1.0 + k * d)
        c = guard(1.0 + k / c)
        h *= d * c
        # odd step: coefficient -(a + m)(a + b + m) x / ((a + 2m)(a + 2m + 1))
        k = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 / guard(1.0 + k * d)
        c = guard(1.0 + k / c)
        step = d * c
        h *= step
        if abs(step - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) = B(x; a, b) / B(a, b), for a, b > 0 and 0 <= x <= 1."""
    if not (a > 0 and b > 0 and 0.0 <= x <= 1.0):
        raise ConfigError(f"betainc needs a, b > 0 and 0 <= x <= 1, got a={a}, b={b}, x={x}")
    if x == 0.0 or x == 1.0:
        return x
    # x^a (1 - x)^b / B(a, b), in logs so large a or b do not overflow
    front = math.exp(a * math.log(x) + b * math.log1p(-x) + math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b))
    # the fraction converges fast only below its mean; above, use I_x(a, b) = 1 - I_{1-x}(b, a)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def _t_tail_and_centre(t: float, df: float) -> tuple[float, float]:
    """(P(|T| >= |t|), P(|T| < |t|)), each computed where it is not a difference of nearly equal numbers."""
    if not df > 0:
        raise ConfigError(f"degrees of freedom must be > 0, got {df}")
    if math.isinf(t):
        return 0.0, 1.0
    x, y = df / (df + t * t), t * t / (df + t * t)  # x + y = 1; each computed directly, so a tiny one is exact
    if x < y:  # far out: the tail is small, take it from I_x(df/2, 1/2)
        tail = betainc(df / 2.0, 0.5, x)
        return tail, 1.0 - tail
    centre = betainc(0.5, df / 2.0, y)  # near zero: the centre is small, I_y(1/2, df/2) = 1 - I_x(df/2, 1/2)
    return 1.0 - centre, centre


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t distribution with df (> 0, not necessarily whole) degrees of freedom."""
    return _t_tail_and_centre(t, df)[0]


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t distribution with df degrees of freedom."""
    tail, centre = _t_tail_and_centre(t, df)
    # symmetric about 0: each tail holds half of `tail`, each side of 0 half of `centre`
    if t >= 0:
        return 0.5 + centre / 2.0 if centre < tail else 1.0 - tail / 2.0
    return 0.5 - centre / 2.0 if centre < tail else tail / 2.0


def t_critical(df: float, alpha: float = ALPHA) -> float:
    """The t > 0 with P(|T_df| >= t) = alpha (by bisection on t_two_sided_p, which falls as t grows)."""
    lo, hi = 0.0, 1.0
    while t_two_sided_p(hi, df) > alpha:
        lo, hi = hi, 2 * hi
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_two_sided_p(mid, df) > alpha else (lo, mid)
    return (lo + hi) / 2


def normal_two_sided_p(z: float) -> float:
    """P(|Z| >= |z|) for a standard normal Z."""
    return math.erfc(abs(z) / math.sqrt(2.0))


# --- comparisons -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Comparison:
    """The outcome of one test of a against b: the means, the test's statistic and p, and the verdict."""

    a: str
    b: str
    mean_a: float
    mean_b: float
    test: str         # "Welch t" or "two-proportion z"
    statistic: float  # t or z, positive when a's mean is higher
    df: float         # Welch's degrees of freedom (inf for the z-test, nan when untested)
    p: float          # two-sided; nan when there was nothing to test against
    n_a: int          # seeds (Welch) or items (z) on each side
    n_b: int
    unit: str = "seeds"
    note: str = field(default="", compare=False)  # why an edge case was decided as it was
    smallest_gap: float = math.nan  # the gap between the means that would have reached p = ALPHA

    @property
    def beyond_noise(self) -> bool:
        """True when the two-sided p is below ALPHA."""
        return not math.isnan(self.p) and self.p < ALPHA

    @property
    def higher(self) -> str | None:
        """The name with the higher mean, beyond noise or not; None when the means are equal."""
        return None if self.mean_a == self.mean_b else self.a if self.mean_a > self.mean_b else self.b

    @property
    def winner(self) -> str | None:
        """The name with the higher mean if the difference is beyond noise, else None."""
        return self.higher if self.beyond_noise else None

    def text(self, verb: str = "is higher than", digits: int = 3) -> str:
        """The sentence fragment every lesson prints for this comparison, e.g.

        'lora (0.812) is higher than full (0.744) beyond noise (Welch t, p = 0.013; 3 seeds each)'
        'lora (0.812) and full (0.801): not told apart by this design (Welch t, p = 0.41; 3 seeds each;
         the smallest gap it detects is 0.036)'
        """
        small = 0 < max(abs(self.mean_a), abs(self.mean_b)) < 10 ** -(digits - 1)  # 0.0004 must not read 0.000
        spec = lambda m: f".{digits}g" if small else f".{digits}f" if abs(m) < 10 else number_spec(m)  # noqa: E731
        fmt = lambda name, m: f"{name} ({m:{spec(m)}})"  # noqa: E731
        how = f"{self.test}, {p_text(self.p)}; {_count(self.n_a, self.n_b, self.unit)}"
        if self.note:
            how += f"; {self.note}"
        if self.beyond_noise:
            hi, lo = (self.a, self.b) if self.mean_a > self.mean_b else (self.b, self.a)
            m_hi, m_lo = max(self.mean_a, self.mean_b), min(self.mean_a, self.mean_b)
            return f"{fmt(hi, m_hi)} {verb} {fmt(lo, m_lo)} beyond noise ({how})"
        if math.isfinite(self.smallest_gap) and self.smallest_gap > 0:
            if self.test.startswith("Welch t on logs"):  # the gap in logs is a ratio of the geometric means
                how += f"; the smallest ratio it detects is {math.exp(self.smallest_gap):.2f}x"
            else:
                how += f"; the smallest gap it detects is {self.smallest_gap:{number_spec(self.smallest_gap)}}"
        return f"{fmt(self.a, self.mean_a)} and {fmt(self.b, self.mean_b)}: {NO_DIFFERENCE} ({how})"

    def __str__(self) -> str:
        return self.text()

    def to_dict(self) -> dict:
        """The comparison as plain numbers for results.json (nan and inf as None)."""
        clean = lambda v: v if isinstance(v, (int, str)) or math.isfinite(v) else None  # noqa: E731
        return {"a": self.a, "b": self.b, "mean_a": self.mean_a, "mean_b": self.mean_b, "test": self.test,
                "statistic": clean(self.statistic), "df": clean(self.df), "p": clean(self.p), "n_a": self.n_a,
                "n_b": self.n_b, "unit": self.unit, "beyond_noise": self.beyond_noise, "winner": self.winner,
                "smallest_gap": clean(self.smallest_gap)}


def differs(a: Sequence[float] | SeedValues, b: Sequence[float] | SeedValues, names: tuple[str, str] = ("A", "B")
            ) -> Comparison:
    """Welch's t-test of per-seed values a against b: is the gap between their means beyond seed noise?"""
    ca, cb = summarize(a), summarize(b)
    base = dict(a=names[0], b=names[1], mean_a=ca.mean, mean_b=cb.mean, test="Welch t", n_a=ca.n, n_b=cb.n)
    if any(math.isnan(v) for v in ca.values + cb.values):
        return Comparison(**base, statistic=math.nan, df=math.nan, p=math.nan,
                          note="a run diverged (nan): untested")
    if ca.n < 2 or cb.n < 2:
        return Comparison(**base, statistic=math.nan, df=math.nan, p=math.nan,
                          note="fewer than 2 seeds: no spread to test against")
    va, vb = ca.var / ca.n, cb.var / cb.n  # squared standard errors of the two means
    gap = ca.mean - cb.mean
    if va + vb == 0.0:  # every seed the same on both sides: the limit of Welch's t as the spreads shrink
        if gap == 0.0:
            return Comparison(**base, statistic=0.0, df=math.inf, p=1.0, note="every seed gave the same value")
        return Comparison(**base, statistic=math.copysign(math.inf, gap), df=math.inf, p=0.0,
                          note="no seed-to-seed variation on either side")
    t = gap / math.sqrt(va + vb)
    wa, wb = va / (va + vb), vb / (va + vb)  # each side's share of the variance: the formula, without under/overflow
    df = 1.0 / (wa ** 2 / (ca.n - 1) + wb ** 2 / (cb.n - 1))  # Welch-Satterthwaite
    return Comparison(**base, statistic=t, df=df, p=t_two_sided_p(t, df),
                      smallest_gap=t_critical(df) * math.sqrt(va + vb))


def log_differs(a: Sequence[float] | SeedValues, b: Sequence[float] | SeedValues, names: tuple[str, str] = ("A", "B")
                ) -> Comparison:
    """Welch's t on the logarithms of positive values: the test for ratios and perplexities, whose seed
    noise multiplies (one seed 40x, the next 200x) rather than adds. On the raw values one wild seed's
    spread hides a hundredfold gap; on logs, a difference in perplexity is a difference in cross-entropy
    (nats per token). The means reported are geometric: exp(mean of the logs)."""
    ca, cb = summarize(a), summarize(b)
    if min(ca.values + cb.values) <= 0:
        raise ConfigError("log_differs compares positive values only (ratios, perplexities)")
    c = differs([math.log(v) for v in ca.values], [math.log(v) for v in cb.values], names)
    return replace(c, mean_a=math.exp(c.mean_a), mean_b=math.exp(c.mean_b), test="Welch t on logs; geometric means")


def proportions(rate_a: float, n_a: int, rate_b: float, n_b: int, names: tuple[str, str] = ("A", "B")
                ) -> Comparison:
    """Two-proportion z-test of two accuracies over n_a and n_b items: is the gap beyond item-sampling noise?

    Pooled over seeds (rate: the mean accuracy, n: items x seeds) it treats every scored item as an
    independent draw, which overstates n when the seeds share their test items; `differs` on the
    per-seed accuracies is the package's test of seed noise.
    """
    if not (0.0 <= rate_a <= 1.0 and 0.0 <= rate_b <= 1.0 and n_a >= 1 and n_b >= 1):
        raise ConfigError(f"rates must lie in [0, 1] and counts be >= 1, got {rate_a}/{n_a}, {rate_b}/{n_b}")
    k_a, k_b = round(rate_a * n_a), round(rate_b * n_b)  # the counts behind the rates
    pooled = (k_a + k_b) / (n_a + n_b)
    base = dict(a=names[0], b=names[1], mean_a=k_a / n_a, mean_b=k_b / n_b, test="two-proportion z",
                n_a=n_a, n_b=n_b, unit="items", df=math.inf)
    if pooled in (0.0, 1.0):  # all right or all wrong on both sides: nothing differs
        return Comparison(**base, statistic=0.0, p=1.0)
    z = (k_a / n_a - k_b / n_b) / math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    return Comparison(**base, statistic=z, p=normal_two_sided_p(z))


@dataclass(frozen=True)
class Best:
    """The setting with the best mean, and every setting the noise rule cannot tell from it."""

    best: str
    tied: tuple[str, ...]                # the settings within noise of the best (the best included)
    comparisons: dict[str, Comparison]   # each other setting against the best


def best_of(cells: Mapping[str, Sequence[float] | SeedValues], higher_is_better: bool = True) -> Best:
    """The setting with the best mean (first listed wins an exact tie), and those within noise of it."""
    if not cells:
        raise ConfigError("best_of needs at least one setting")
    summaries = {k: summarize(v) for k, v in cells.items()}
    sign = 1 if higher_is_better else -1
    best = max(summaries, key=lambda k: sign * summaries[k].mean)  # max keeps the first of equal keys
    comparisons = {k: differs(summaries[best], c, (best, k)) for k, c in summaries.items() if k != best}
    tied = tuple(k for k in summaries if k == best or not comparisons[k].beyond_noise)
    return Best(best, tied, comparisons)


def holm(ps: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of m p-values (nan, an untested comparison, stays nan and is not counted).

    Sorted ascending, the k-th smallest p (k from 0) is multiplied by m - k, each adjusted p is at least the
    one before it, and none exceeds 1. Calling a comparison beyond noise when its adjusted p < ALPHA keeps
    the chance of any false call among the m at most ALPHA, whichever of them are truly null.
    """
    order = sorted((i for i, p in enumerate(ps) if not math.isnan(p)), key=lambda i: ps[i])
    out, running = [math.nan] * len(ps), 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - k) * ps[i]))
        out[i] = running
    return out


def p_text(p: float) -> str:
    if math.isnan(p):
        return "untested"
    if p < 0.001:
        return "p < 0.001"
    text = f"{p:.2g}"
    if (float(text) < ALPHA) != (p < ALPHA):  # never round a p across the threshold (0.0496 is not "0.05")
        text = f"{p:.3g}"
    return f"p = {text}"


def _count(n_a: int, n_b: int, unit: str) -> str:
    if n_a == n_b:
        return f"{n_a} {unit[:-1] if n_a == 1 else unit} each"
    return f"{n_a} and {n_b} {unit}"
