"""``python -m mvector.library``: manage voiceprint libraries from the command line.

    python -m mvector.library copy --from audio_db/ --to postgresql://mvector@db.example:5432/voiceprints
    python -m mvector.library copy --from postgresql://mvector@db.example/voiceprints --to backup_db/

The PostgreSQL password comes from PGPASSWORD, ~/.pgpass or the file named by PGPASSFILE, never from
the URL. Copying is idempotent (run it again to add what is new) and checks the counts at the end.
"""
from mvector.apps.cli import run_cli, script_parser


def main(argv=None) -> int:
    parser = script_parser(__doc__, "python -m mvector.library")
    commands = parser.add_subparsers(dest="command", required=True)
    copy = commands.add_parser("copy", help="copy a library to another store (folder or postgresql:// URL)")
    copy.add_argument("--from", dest="source", required=True, help="the library to copy")
    copy.add_argument("--to", dest="target", required=True, help="where to copy it")
    args = parser.parse_args(argv)
    return run_cli(copy_command, args.source, args.target)


def copy_command(source, target):
    from mvector.library.copy import copy_library

    counts = copy_library(source, target)
    print(f"copied {source} -> {target}: {counts['users']} users, {counts['enrolments']} enrolments "
          f"({counts['added']} new); {target} now holds {counts['target_users']} users and "
          f"{counts['target_enrolments']} enrolments")
