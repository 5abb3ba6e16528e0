from django.db import migrations, models
import django.db.models.deletion


def assign_default_project(apps, schema_editor):  # type: ignore[no-untyped-def]
    """Keys made before projects existed belong to the 'default' project."""
    Project = apps.get_model("access", "Project")
    ApiKey = apps.get_model("access", "ApiKey")
    GlobalPolicy = apps.get_model("access", "GlobalPolicy")
    GlobalPolicy.objects.get_or_create(pk=1)
    if ApiKey.objects.filter(project__isnull=True).exists():
        project, _ = Project.objects.get_or_create(name="default")
        ApiKey.objects.filter(project__isnull=True).update(project=project)


class Migration(migrations.Migration):
    dependencies = [("access", "0002_projects_policies_quotas")]

    operations = [
        migrations.RunPython(assign_default_project, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="apikey",
            name="project",
            field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name="keys", to="access.project"),
        ),
    ]
