import sys
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from tqdm import tqdm

from audit import exports, selectors
from audit.filters import AuditEventFilter
from audit.services import record_export


def _when(value: str):  # type: ignore[no-untyped-def]
    parsed = parse_datetime(value)
    if parsed is None:
        raise CommandError(f"Not an ISO 8601 time: {value!r}")
    return parsed if timezone.is_aware(parsed) else timezone.make_aware(parsed, timezone.get_current_timezone())


class Command(BaseCommand):
    help = (
        "Audit log: `audit verify` checks the hash chain (exit 1 naming the first broken record); "
        "`audit export --format jsonl --since T` streams an export to stdout or --output with a progress bar; "
        "`audit usage --since T` prints requests and tokens per project/key/model."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        sub.add_parser("verify", help="check the whole chain")
        export = sub.add_parser("export", help="stream events as CSV or JSON Lines")
        export.add_argument("--format", choices=sorted(exports.FORMATS), default="jsonl")
        export.add_argument("--since", help="ISO 8601, inclusive")
        export.add_argument("--until", help="ISO 8601, exclusive")
        export.add_argument("--actor")
        export.add_argument("--action", dest="event_action")
        export.add_argument("--output", "-o", help="file to write (default: stdout)")
        export.add_argument("--no-progress", action="store_true")
        usage = sub.add_parser("usage", help="usage report for chargeback")
        usage.add_argument("--since", help="ISO 8601 (default: 30 days before --until)")
        usage.add_argument("--until", help="ISO 8601 (default: now)")
        usage.add_argument("--group-by", default="project,key,model")

    def handle(self, *args: object, **options: object) -> None:
        getattr(self, f"_{options['action']}")(options)

    def _verify(self, options: dict[str, object]) -> None:
        with tqdm(desc="verifying", unit=" rows", file=sys.stderr, disable=None) as bar:
            report = selectors.verify_chain(progress=bar.update)
        if report.ok:
            self.stdout.write(f"ok: {report.checked} records, chain intact")
            return
        self.stdout.write(
            f"BROKEN at record {report.broken_id}: {report.reason} (expected {report.expected}, found {report.found}); "
            f"{report.checked} records before it are intact"
        )
        sys.exit(1)

    def _export(self, options: dict[str, object]) -> None:
        query = {"since": options["since"], "until": options["until"], "actor": options["actor"], "action": options["event_action"]}
        filters = AuditEventFilter({k: v for k, v in query.items() if v}, queryset=selectors.list_audit_events())
        if not filters.is_valid():
            raise CommandError(f"Invalid filter: {dict(filters.errors)}")
        record_export(actor="cli", fmt=str(options["format"]), filters={k: v for k, v in query.items() if v})
        queryset = filters.qs
        total = queryset.count()
        out = open(str(options["output"]), "wb") if options["output"] else sys.stdout.buffer  # noqa: SIM115
        try:
            with tqdm(total=total, desc="exporting", unit=" rows", file=sys.stderr, disable=bool(options["no_progress"]) or None) as bar:
                for chunk in exports.iter_export(queryset, fmt=str(options["format"]), progress=bar.update):
                    out.write(chunk)
        finally:
            if out is not sys.stdout.buffer:
                out.close()
            else:
                out.flush()

    def _usage(self, options: dict[str, object]) -> None:
        until = _when(str(options["until"])) if options["until"] else timezone.now()
        since = _when(str(options["since"])) if options["since"] else until - timedelta(days=30)
        groups = [name.strip() for name in str(options["group_by"]).split(",") if name.strip()]
        if not groups or set(groups) - set(selectors.USAGE_GROUPS):
            raise CommandError(f"--group-by takes a comma-separated subset of {sorted(selectors.USAGE_GROUPS)}")
        rows = selectors.get_usage_report(since=since, until=until, group_by=groups)
        self.stdout.write("\t".join([*groups, "requests", "prompt_tokens", "completion_tokens", "total_tokens"]))
        for row in rows:
            self.stdout.write("\t".join(str(row[name]) for name in [*groups, "requests", "prompt_tokens", "completion_tokens", "total_tokens"]))
