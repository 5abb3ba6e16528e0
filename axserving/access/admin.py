"""Django admin for governance: every save goes through the audited services."""

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group, User
from django.db.models import QuerySet
from django.http import HttpRequest

from audit.admin_mixins import AuditedAdminMixin

from . import services
from .models import QUOTA_FIELDS, ApiKey, GlobalPolicy, PolicyVersion, Project, Scope


def actor_of(request: HttpRequest) -> str:
    return f"user:{request.user.get_username()}"


def _changes(form: forms.ModelForm, fields: tuple[str, ...]) -> dict[str, Any]:
    return {name: form.cleaned_data[name] for name in form.changed_data if name in fields}


class ApiKeyForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(choices=Scope.choices, widget=forms.CheckboxSelectMultiple, initial=[Scope.INFERENCE])

    class Meta:
        model = ApiKey
        fields = ["project", "name", "scopes", "allowed_models", "expires_at", *QUOTA_FIELDS]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    form = ApiKeyForm
    list_display = ["name", "prefix", "project", "scopes", "created_by", "created_at", "expires_at", "revoked_at"]
    list_filter = ["project", "revoked_at"]
    readonly_fields = ["prefix", "created_by", "created_at", "revoked_at"]
    search_fields = ["name", "prefix"]
    actions = ["revoke_keys"]

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> list[str]:
        return [*self.readonly_fields, "project"] if obj else self.readonly_fields

    def has_delete_permission(self, request: HttpRequest, obj: ApiKey | None = None) -> bool:
        return False  # keys are revoked, never deleted: the audit trail refers to them

    def save_model(self, request: HttpRequest, obj: ApiKey, form: forms.ModelForm, change: bool) -> None:
        if change:
            services.update_api_key(key_id=obj.pk, actor=actor_of(request), changes=_changes(form, services.KEY_FIELDS))
            return
        data = form.cleaned_data
        key, secret = services.create_api_key(
            name=data["name"],
            project_id=data["project"].pk,
            scopes=list(data["scopes"]),
            allowed_models=data["allowed_models"] or [],
            expires_at=data["expires_at"],
            actor=actor_of(request),
            **{name: data[name] for name in QUOTA_FIELDS},
        )
        obj.pk, obj.prefix = key.pk, key.prefix
        messages.warning(request, f"The secret of '{key.name}' is shown this once, store it now: {secret}")

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for key in queryset:
            services.revoke_api_key(key_id=key.pk, actor=actor_of(request))
        self.message_user(request, f"Revoked {queryset.count()} key(s); every gateway refuses them within a second.")


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ["name", "allowed_models", "max_tokens_cap", "requests_per_minute", "tokens_per_day", "policy_version"]
    readonly_fields = ["policy_version", "created_at", "updated_at"]
    search_fields = ["name"]

    def get_readonly_fields(self, request: HttpRequest, obj: Project | None = None) -> list[str]:
        return [*self.readonly_fields, "name"] if obj else self.readonly_fields

    def has_delete_permission(self, request: HttpRequest, obj: Project | None = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: Project, form: forms.ModelForm, change: bool) -> None:
        if change:
            services.update_project(project_id=obj.pk, actor=actor_of(request), changes=_changes(form, services.PROJECT_FIELDS))
            return
        fields = {name: form.cleaned_data[name] for name in services.PROJECT_FIELDS if name in form.cleaned_data}
        project = services.create_project(name=form.cleaned_data["name"], actor=actor_of(request), **fields)
        obj.pk = project.pk


@admin.register(GlobalPolicy)
class GlobalPolicyAdmin(admin.ModelAdmin):
    list_display = ["__str__", "routing_policy", "max_queue_per_model", "queue_timeout_seconds", "updated_by", "updated_at"]
    readonly_fields = ["version", "updated_by", "updated_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: GlobalPolicy | None = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: GlobalPolicy, form: forms.ModelForm, change: bool) -> None:
        from .models import GLOBAL_POLICY_FIELDS

        services.update_global_policy(actor=actor_of(request), changes=_changes(form, GLOBAL_POLICY_FIELDS))


@admin.register(PolicyVersion)
class PolicyVersionAdmin(admin.ModelAdmin):
    """Policy history: read-only."""

    list_display = ["__str__", "changed_by", "changed_at", "comment"]
    list_filter = ["project"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: PolicyVersion | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: PolicyVersion | None = None) -> bool:
        return False


# Granting someone operator or auditor rights is itself a governance change.
admin.site.unregister(User)
admin.site.unregister(Group)


@admin.register(User)
class AuditedUserAdmin(AuditedAdminMixin, UserAdmin):
    pass


@admin.register(Group)
class AuditedGroupAdmin(AuditedAdminMixin, GroupAdmin):
    pass
