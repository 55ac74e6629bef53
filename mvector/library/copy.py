"""Copy a voiceprint library between stores (a folder and PostgreSQL, either way): users,
enrolment audio, embeddings and the model fingerprint. Idempotent: enrolments keep their keys, so
copying again adds only what is new; the counts are checked at the end."""
from tqdm import tqdm

from mvector.library.names import VoiceprintError
from mvector.library.stores import open_library


def copy_library(source, target, progress: bool = True) -> dict:
    """Copy ``source`` into ``target`` (folders or ``postgresql://`` URLs); returns the counts."""
    if str(source) == str(target):
        raise VoiceprintError(f"copying a library onto itself ({source}) would change nothing")
    with open_library(source, fingerprint=None, progress=progress) as origin:
        fingerprint = origin.stored_fingerprint()
        users, enrolments = origin.counts()
        with open_library(target, fingerprint=None, progress=progress) as destination:
            existing = destination.stored_fingerprint()
            if existing is not None and fingerprint is not None and existing != fingerprint and destination.counts()[1]:
                raise VoiceprintError(f"{target} holds voiceprints of model {existing} and {source} of model "
                                      f"{fingerprint}; they cannot be mixed (open one with the other's model to "
                                      "re-embed it first)")
        # Reopened with the source's fingerprint: it is stored there, so every replica knows the model.
        with open_library(target, fingerprint=fingerprint, progress=progress) as destination:
            added = 0
            for name, key, wav, embedding in tqdm(origin.enrolments(), total=enrolments, unit="enrolment",
                                                  desc="copying", disable=not progress):
                added += bool(destination.register(name, wav, embedding, key=key))
            copied_users, copied_enrolments = destination.counts()
    if copied_users < users or copied_enrolments < enrolments:
        raise VoiceprintError(f"after copying, {target} holds {copied_users} users and {copied_enrolments} "
                              f"enrolments, fewer than the {users} and {enrolments} of {source}")
    return {"users": users, "enrolments": enrolments, "added": added,
            "target_users": copied_users, "target_enrolments": copied_enrolments}
