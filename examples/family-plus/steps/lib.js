// The command-step contract in a few lines (docs/steps.md): the step request is one JSON
// document on standard input; what the handler returns is printed as the step's output; what
// it throws fails the step: exit 75 to be retried, exit 1 for good, with {"code", "message"}
// as the last line of standard error.

const STOP_WORDS = new Set(
  ('a about after again all also an and any are as at back be been before but by came could ' +
   'did do each even every far for from had has have he her him his how i if in into is it its ' +
   'just last me more most my no not now of on once one only or our out over she so some still ' +
   'than that the their them then there they this to up us very was we went were what when ' +
   'which while who will with would you your').split(' '),
);

/** The lowercase words of `text`. */
function words(text) {
  return text.toLowerCase().match(/[a-z][a-z']*/g) ?? [];
}

/** The words worth counting: no stop words, nothing shorter than three letters. */
function contentWords(text) {
  return words(text).filter((w) => w.length > 2 && !STOP_WORDS.has(w));
}

/** How often each content word of `text` occurs. */
function counts(text) {
  const found = new Map();
  for (const w of contentWords(text)) found.set(w, (found.get(w) ?? 0) + 1);
  return found;
}

/** The keys of `scores` (a Map), highest first, ties in alphabetical order. */
function ranked(scores) {
  return [...scores.keys()].sort((a, b) => scores.get(b) - scores.get(a) || a.localeCompare(b));
}

function capitalized(word) {
  return word.charAt(0).toUpperCase() + word.slice(1);
}

/** A failure that retrying cannot fix. */
class Refused extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

/** Runs `handlers[name]` (name: the program's first argument) on the step request. */
function serve(handlers) {
  const name = process.argv[2];
  const handler = handlers[name];
  let text = '';
  process.stdin.setEncoding('utf8');
  process.stdin.on('data', (chunk) => (text += chunk));
  process.stdin.on('end', async () => {
    try {
      if (!handler) throw new Refused('no_such_step', `no step named ${JSON.stringify(name)}`);
      const output = await handler(JSON.parse(text));
      process.stdout.write(JSON.stringify(output) + '\n');
    } catch (error) {
      const code = error.code ?? 'step_error';
      process.stderr.write(JSON.stringify({ code, message: error.message }) + '\n');
      process.exit(error instanceof Refused ? 1 : 75);
    }
  });
}

module.exports = { words, contentWords, counts, ranked, capitalized, Refused, serve };
