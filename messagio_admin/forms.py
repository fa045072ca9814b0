"""Forms of the replay screens: why, and how carefully (canary, rate, failure threshold)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.utils.translation import gettext_lazy as _


class ReplayOptionsForm(forms.Form):
    """A bulk replay's reason and the safety options of :func:`messagio.replays.run_replay`."""

    reason = forms.CharField(
        label=_("Reason"),
        max_length=2000,
        help_text=_("Why, for the audit trail: e.g. the fix deployed."),
        widget=forms.TextInput(attrs={"size": 50}),
    )
    canary = forms.IntegerField(
        label=_("Canary"),
        required=False,
        min_value=1,
        help_text=_("Replay this many first and wait for their outcome before the rest."),
        widget=forms.NumberInput(attrs={"style": "width: 6em"}),
    )
    rate = forms.FloatField(
        label=_("Rate"),
        required=False,
        min_value=0.001,
        help_text=_("At most this many deliveries per second."),
        widget=forms.NumberInput(attrs={"style": "width: 6em", "step": "any"}),
    )
    max_failure_percent = forms.FloatField(
        label=_("Stop above failure rate (%)"),
        required=False,
        min_value=0,
        max_value=100,
        help_text=_("Stop when more than this share of the replayed deliveries fails again."),
        widget=forms.NumberInput(attrs={"style": "width: 6em", "step": "any"}),
    )

    def options(self) -> dict[str, Any]:
        """The cleaned options as :class:`messagio.models.Replay` fields."""
        data = self.cleaned_data
        percent = data.get("max_failure_percent")
        return {
            "reason": data["reason"],
            "canary": data.get("canary"),
            "rate": data.get("rate"),
            "max_failure_rate": None if percent is None else percent / 100,
        }


class GroupReplayForm(ReplayOptionsForm):
    """Replay one group of the Failures page: its key travels in hidden fields."""

    listener = forms.CharField(max_length=255, widget=forms.HiddenInput)
    messagio_type = forms.CharField(max_length=255, widget=forms.HiddenInput)
    error_type = forms.CharField(max_length=255, required=False, widget=forms.HiddenInput)


class ReplayReasonForm(forms.Form):
    """The optional reason of a single replay (a delivery, an event)."""

    reason = forms.CharField(label=_("Reason"), max_length=2000, required=False)
