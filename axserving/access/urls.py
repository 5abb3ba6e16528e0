from django.urls import path

from audit import views as audit
from . import views

urlpatterns = [
    path("keys", views.KeyListCreateView.as_view(), name="admin-keys"),
    path("keys/<int:key_id>", views.KeyDetailView.as_view(), name="admin-key"),
    path("projects", views.ProjectListCreateView.as_view(), name="admin-projects"),
    path("projects/<int:project_id>", views.ProjectDetailView.as_view(), name="admin-project"),
    path("policy", views.PolicyView.as_view(), name="admin-policy"),
    path("audit", audit.AuditListView.as_view(), name="admin-audit"),
    path("audit/verify", audit.AuditVerifyView.as_view(), name="admin-audit-verify"),
    path("usage", audit.UsageReportView.as_view(), name="admin-usage"),
]
