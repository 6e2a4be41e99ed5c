"""Named header rules: what makes cryptsetup refuse a header, one name and one reason each.

The LUKS1 rules live in ``imgcrypt.luks.luks1.rules``, the LUKS2 ones in
``imgcrypt.luks.luks2.rules``; both raise :class:`HeaderRuleError`, which names the rule,
so ``imgcrypt inspect`` can say which rule a refused header breaks.
"""

from __future__ import annotations

from dataclasses import dataclass

from imgcrypt.errors import FormatError, FormatFault


@dataclass(frozen=True)
class Rule:
    name: str
    reason: str


# ``rule`` names the broken rule; ``reason`` is BAD_MAGIC (not LUKS here), UNSUPPORTED (a
# version cryptsetup does not know) or CHECKSUM (a copy's checksum does not match) where one of
# those applies, so a caller decides by reason or rule, never by a second base class.
class HeaderRuleError(FormatError):
    """Catch when a header breaks one of cryptsetup's validity rules (``rule`` names it)."""

    def __init__(self, rule: Rule, detail: str = "", *, reason: FormatFault | None = None) -> None:
        self.rule = rule
        text = f"header breaks rule {rule.name}: {rule.reason}"
        super().__init__(f"{text} ({detail})" if detail else text, reason=reason)


def rule(registry: dict[str, Rule], name: str, reason: str) -> Rule:
    """Declare a rule in ``registry`` (one per format) and return it."""
    assert name not in registry, name
    registry[name] = Rule(name, reason)
    return registry[name]


COMMON: dict[str, Rule] = {}
LUKS_MAGIC = rule(COMMON, "luks-magic",
                  "the image starts with the LUKS magic, or keeps a LUKS2 secondary copy")
LUKS_VERSION = rule(COMMON, "luks-version", "the version after the magic is 1 or 2")
IMAGE_HOLDS_HEADER = rule(
    COMMON, "image-holds-header",
    "the image is long enough for the header and every keyslot area it declares",
)
