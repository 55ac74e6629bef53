"""The voiceprint recognition app behind ``infer_recognition.py``.

With no action flag it runs the reference toolkit's interactive menu (register from the
microphone, recognise, list, remove, continuous real-time recognition); with ``--register NAME``,
``--recognize``, ``--list`` or ``--remove NAME`` it does that one thing and exits, from
``--audio FILE`` or ``--seconds`` of microphone recording, so it can be scripted.

Exit codes: 0 done (recognised, registered, listed, removed); 1 done but nobody recognised (score
below the threshold or an empty library) or ``--remove`` of a user who is not registered;
2 an error (bad arguments, unusable audio or model, no audio server or microphone), reported in
one line on stderr.
"""

import sys

from mvector.apps import microphone
from mvector.apps.cli import add_backend_argument, add_device_argument, add_model_arguments, script_parser
from mvector.errors import AudioError, MVectorError
from mvector.library.folder import DB_FILE, library_exists
from mvector.library.names import normalize_user_name

EXIT_OK = 0
EXIT_NOT_RECOGNISED = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130  # the shell's convention for Ctrl+C

DEFAULT_SECONDS = 3.0
MENU = ("0: register from the microphone   1: recognise   2: list users   3: remove a user   "
        "4: continuous recognition (Ctrl+C stops)   q: quit")


def build_parser():
    parser = script_parser("Voiceprint recognition: register speakers and recognise them from the microphone "
                           "or from audio files. Without an action flag, an interactive menu.",
                           "infer_recognition.py")
    parser.epilog = "Exit codes: 0 ok; 1 nobody recognised, or --remove of an unknown user; 2 error."
    actions = parser.add_mutually_exclusive_group()
    actions.add_argument("--register", metavar="NAME", help="register a recording as user NAME")
    actions.add_argument("--recognize", action="store_true", help="say who is speaking in a recording")
    actions.add_argument("--list", action="store_true", help="print the registered users, one a line")
    actions.add_argument("--remove", metavar="NAME", help="erase user NAME and their recordings")
    parser.add_argument("--audio", metavar="FILE",
                        help="use this audio file instead of recording (with --register / --recognize)")
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS,
                        help="length of each microphone recording in seconds")
    add_model_arguments(parser)
    parser.add_argument("--audio_db_path", default="audio_db/",
                        help="voiceprint library folder, relative to the current folder; --register creates it, "
                             "the other actions need it to exist")
    add_device_argument(parser)
    add_backend_argument(parser)
    return parser


class RecognitionApp:
    """The app's actions on a predictor; each returns an exit code and prints its outcome.

    ``record(seconds, sample_rate, on_start)`` and ``record_chunks(seconds, sample_rate, on_start)``
    default to the microphone (``on_start`` announces that recording has begun); ``ask`` is
    ``input`` and ``out`` receives every printed line."""

    def __init__(self, predictor, seconds: float = DEFAULT_SECONDS, record=microphone.record,
                 record_chunks=microphone.record_chunks, ask=input, out=print):
        self.predictor = predictor
        self.seconds = seconds
        self._record = record
        self._record_chunks = record_chunks
        self._ask = ask
        self._out = out

    def _audio(self, audio):
        """``(audio, sample_rate)``: the given file, or a fresh microphone recording."""
        if audio is not None:
            return audio, None
        rate = self.predictor.sample_rate
        return self._record(self.seconds, rate, on_start=self._announce), rate

    def _announce(self) -> None:
        self._out(f"Recording {self.seconds:g} s ... speak now")

    def register(self, name: str, audio=None) -> int:
        audio, rate = self._audio(audio)
        self.predictor.register(audio, name, sample_rate=rate)
        self._out(f"Registered: {name}")
        return EXIT_OK

    def recognize(self, audio=None) -> int:
        audio, rate = self._audio(audio)
        name, score = self.predictor.recognition(audio, sample_rate=rate)
        return self._report(name, score)

    def _report(self, name, score, prefix: str = "") -> int:
        if name is not None:
            self._out(f"{prefix}Recognised: {name} (score {score:.4f})")
            return EXIT_OK
        if score is None:
            self._out(f"{prefix}Not recognised: the voiceprint library is empty")
        else:
            self._out(f"{prefix}Not recognised: best score {score:.4f} is below the threshold "
                      f"{self.predictor.threshold:.4f}")
        return EXIT_NOT_RECOGNISED

    def list_users(self, say_if_empty: bool = True) -> int:
        """One name a line; scripts pass ``say_if_empty=False`` so an empty library prints nothing."""
        users = self.predictor.get_users()
        for name in users:
            self._out(name)
        if not users and say_if_empty:
            self._out("(no users registered)")
        return EXIT_OK

    def remove(self, name: str) -> int:
        if self.predictor.remove_user(name):
            self._out(f"Removed: {name}")
            return EXIT_OK
        self._out(f"No such user: {name}")
        return EXIT_NOT_RECOGNISED

    def continuous(self) -> int:
        """Recognise every ``seconds``-long chunk of an uninterrupted recording until Ctrl+C
        (or the chunks run out); silent chunks are reported, not fatal."""
        rate = self.predictor.sample_rate
        chunks = self._record_chunks(self.seconds, rate, on_start=lambda: self._out(
            f"Listening in {self.seconds:g} s chunks; Ctrl+C stops."))
        try:
            for index, chunk in enumerate(chunks):
                prefix = f"[{index * self.seconds:7.1f} s] "
                try:
                    name, score = self.predictor.recognition(chunk, sample_rate=rate)
                except AudioError as exc:
                    self._out(f"{prefix}(no usable speech: {exc})")
                    continue
                self._report(name, score, prefix)
        except KeyboardInterrupt:
            self._out("Stopped.")
        finally:
            chunks.close()
        return EXIT_OK

    def interactive(self) -> int:
        """The menu loop; errors of one action are printed and the menu comes back."""
        actions = {"0": self._ask_register, "1": self._ask_recognize, "2": self.list_users,
                   "3": self._ask_remove, "4": self.continuous}
        while True:
            try:
                choice = self._ask(f"{MENU}\n> ").strip()
            except EOFError:  # stdin closed: same as quitting
                return EXIT_OK
            if choice.lower() == "q":
                return EXIT_OK
            action = actions.get(choice)
            if action is None:
                self._out(f"Unknown choice {choice!r}: type 0, 1, 2, 3, 4 or q")
                continue
            try:
                action()
            except MVectorError as exc:
                self._out(f"Error: {exc}")
            except EOFError:
                return EXIT_OK

    def _ask_register(self) -> None:
        self._ask(f"Press Enter to record {self.seconds:g} s: ")
        wav, rate = self._audio(None)
        name = self._ask("Name of this speaker: ").strip()
        if name:
            self.predictor.register(wav, name, sample_rate=rate)
            self._out(f"Registered: {name}")

    def _ask_recognize(self) -> None:
        self._ask(f"Press Enter to record {self.seconds:g} s: ")
        self.recognize()

    def _ask_remove(self) -> None:
        name = self._ask("Name of the user to remove: ").strip()
        if name:
            self.remove(name)


def main(argv=None) -> int:
    """Run the app with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.audio is not None and args.register is None and not args.recognize:
        parser.error("--audio goes with --register or --recognize")
    if not args.seconds > 0:
        parser.error(f"--seconds must be a positive number, got {args.seconds:g}")
    uses_microphone = args.audio is None and not args.list and args.remove is None
    try:
        if uses_microphone:
            microphone.check_audio_server()  # fail in a moment, before the model loads
        for name in (args.register, args.remove):
            if name is not None:
                normalize_user_name(name)  # an empty or path-like name fails before anything loads
        if (args.list or args.recognize or args.remove is not None) and not library_exists(args.audio_db_path):
            raise MVectorError(f"no voiceprint library at {args.audio_db_path} (no {DB_FILE} there); register "
                               f"someone first (--register NAME), or give the library's folder as --audio_db_path")
        from mvector.inference.predictor import MVectorPredictor

        with MVectorPredictor(model_dir=args.model_dir, audio_db_path=args.audio_db_path,
                              threshold=args.threshold, use_gpu=args.use_gpu, backend=args.backend,
                              model=args.model) as predictor:
            app = RecognitionApp(predictor, seconds=args.seconds)
            if args.register is not None:
                return app.register(args.register, args.audio)
            if args.recognize:
                return app.recognize(args.audio)
            if args.list:
                return app.list_users(say_if_empty=False)
            if args.remove is not None:
                return app.remove(args.remove)
            return app.interactive()
    except MVectorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
