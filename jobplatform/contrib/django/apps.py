from __future__ import annotations

from django.apps import AppConfig


class JobPlatformConfig(AppConfig):
    name = "jobplatform.contrib.django"
    label = "jobplatform"
    verbose_name = "jobplatform"
