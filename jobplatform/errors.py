"""The platform's errors: a small tree, one line each."""

from __future__ import annotations


class JobPlatformError(Exception):
    """Base of every error the platform raises on purpose."""


class ConfigError(JobPlatformError):
    """A setting is missing or has a wrong value; the message names the variable."""


class StackError(JobPlatformError):
    """A local service could not be found or started."""


class PublishError(JobPlatformError):
    """A job could not be published."""


class JobError(JobPlatformError):
    """A job failed for a reason a person can read; not worth retrying."""


class TransientJobError(JobPlatformError):
    """A job hit a passing fault (S3, Redis); worth retrying with backoff."""


class JobHandedBack(JobPlatformError):
    """A worker stopping gracefully gave the job back to its queue unfinished."""
