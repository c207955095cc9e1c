# The academy app's first migration.

import uuid

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True

    dependencies = [
    ]

    operations = [
        migrations.CreateModel(
            name='Lecture',
            fields=[
                ('id', models.BigIntegerField(primary_key=True, serialize=False)),
                ('academy_id', models.BigIntegerField()),
                ('title', models.CharField(default='', max_length=200)),
            ],
        ),
        migrations.CreateModel(
            name='Video',
            fields=[
                ('id', models.UUIDField(default=uuid.uuid4, primary_key=True, serialize=False)),
                ('academy_id', models.BigIntegerField()),
                ('status', models.CharField(max_length=20)),
                ('attempt', models.IntegerField()),
                ('source_key', models.CharField(max_length=500, null=True)),
                ('hls_key', models.CharField(max_length=500, null=True)),
                ('duration_s', models.FloatField(null=True)),
                ('renditions', models.JSONField(null=True)),
                ('error', models.TextField(null=True)),
                ('started_at', models.DateTimeField(null=True)),
                ('finished_at', models.DateTimeField(null=True)),
                ('updated_at', models.DateTimeField(null=True)),
            ],
        ),
        migrations.CreateModel(
            name='Student',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('academy_id', models.BigIntegerField()),
                ('mobile', models.CharField(max_length=20)),
                ('full_name', models.CharField(max_length=100)),
                ('parent_mobile', models.CharField(blank=True, max_length=20, null=True)),
                ('school', models.CharField(blank=True, max_length=100, null=True)),
                ('grade', models.PositiveSmallIntegerField(blank=True, null=True)),
                ('birth_date', models.DateField(blank=True, null=True)),
                ('created_at', models.DateTimeField()),
                ('updated_at', models.DateTimeField()),
            ],
            options={
                'constraints': [models.UniqueConstraint(fields=('academy_id', 'mobile'), name='student_academy_mobile')],
            },
        ),
        migrations.CreateModel(
            name='Enrollment',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('enrolled_at', models.DateTimeField()),
                ('lecture', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, to='academy.lecture')),
                ('student', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='enrollments', to='academy.student')),
            ],
            options={
                'constraints': [models.UniqueConstraint(fields=('lecture', 'student'), name='enrollment_lecture_student')],
            },
        ),
    ]
