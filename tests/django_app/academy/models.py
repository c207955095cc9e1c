"""An academy's own models, as a Django team has them: its names, its tenant field, its
migrations. The writer writes into these tables through the table map the contrib module builds
from them (settings.JOBPLATFORM_TABLES)."""

from __future__ import annotations

import uuid

from django.db import models


class Lecture(models.Model):
    id = models.BigIntegerField(primary_key=True)
    academy_id = models.BigIntegerField()
    title = models.CharField(max_length=200, default="")


class Student(models.Model):
    academy_id = models.BigIntegerField()
    mobile = models.CharField(max_length=20)
    full_name = models.CharField(max_length=100)
    parent_mobile = models.CharField(max_length=20, null=True, blank=True)
    school = models.CharField(max_length=100, null=True, blank=True)
    grade = models.PositiveSmallIntegerField(null=True, blank=True)
    birth_date = models.DateField(null=True, blank=True)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["academy_id", "mobile"],
                                               name="student_academy_mobile")]


class Enrollment(models.Model):
    lecture = models.ForeignKey(Lecture, on_delete=models.CASCADE)
    student = models.ForeignKey(Student, on_delete=models.CASCADE, related_name="enrollments")
    enrolled_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["lecture", "student"],
                                               name="enrollment_lecture_student")]


class Video(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    academy_id = models.BigIntegerField()
    status = models.CharField(max_length=20)
    attempt = models.IntegerField()
    source_key = models.CharField(max_length=500, null=True)
    hls_key = models.CharField(max_length=500, null=True)
    duration_s = models.FloatField(null=True)
    renditions = models.JSONField(null=True)
    error = models.TextField(null=True)
    started_at = models.DateTimeField(null=True)
    finished_at = models.DateTimeField(null=True)
    updated_at = models.DateTimeField(null=True)
