#!/usr/bin/env node
// The eight tasks of the story chain, one function each. Each gets the story as the tasks
// before it left it (the run's input) and returns it with its own part added: the output of
// one is the input of the next (tasks.toml passes it on).

const { words, counts, ranked, capitalized, Refused, serve } = require('./lib.js');

/** The text split into sentences (a stand-in for speech to text). */
function transcribe(story) {
  const text = (story.text ?? '').replace(/\s+/g, ' ').trim();
  const sentences = (text.match(/[^.!?]+[.!?]+|[^.!?]+$/g) ?? []).map((s) => s.trim()).filter(Boolean);
  if (sentences.length === 0) throw new Refused('empty_story', `story ${story.id} has no sentence`);
  return { ...story, sentences, words: words(text).length };
}

/** A bag-of-words vector per sentence, over the story's eight most frequent words. */
function embed(story) {
  const vocabulary = ranked(counts(story.sentences.join(' '))).slice(0, 8);
  const vectors = story.sentences.map((sentence) => {
    const found = counts(sentence);
    return vocabulary.map((w) => found.get(w) ?? 0);
  });
  return { ...story, vocabulary, vectors };
}

/** The three words of the vocabulary found in the most sentences. */
function tags(story) {
  const spread = new Map(
    story.vocabulary.map((w, i) => [w, story.vectors.filter((v) => v[i] > 0).length]),
  );
  return { ...story, tags: ranked(spread).slice(0, 3) };
}

/** The sentence closest (cosine) to the story as a whole: the mean of its vectors. */
function quote(story) {
  const mean = story.vocabulary.map((_, i) => story.vectors.reduce((sum, v) => sum + v[i], 0) / story.vectors.length);
  const norm = (v) => Math.sqrt(v.reduce((sum, x) => sum + x * x, 0));
  const cosine = (v) => (norm(v) === 0 ? 0 : v.reduce((sum, x, i) => sum + x * mean[i], 0) / (norm(v) * norm(mean)));
  let best = 0;
  story.vectors.forEach((v, i) => {
    if (cosine(v) > cosine(story.vectors[best])) best = i;
  });
  return { ...story, quote: story.sentences[best] };
}

/** A title from the first two tags. */
function title(story) {
  const [first, second] = story.tags.map(capitalized);
  return { ...story, title: second ? `The ${first} and the ${second}` : `The ${first ?? 'Story'}` };
}

/** The first sentence, the quote and the last sentence, in story order. */
function summary(story) {
  const picked = [0, story.sentences.indexOf(story.quote), story.sentences.length - 1];
  const unique = [...new Set(picked)].sort((a, b) => a - b);
  return { ...story, summary: unique.map((i) => story.sentences[i]).join(' ') };
}

/** Chapters of up to three sentences, each headed by its most frequent word not yet a heading. */
function chapters(story) {
  const made = [];
  for (let i = 0; i < story.sentences.length; i += 3) {
    const text = story.sentences.slice(i, i + 3).join(' ');
    const used = made.map((c) => c.heading.toLowerCase());
    const word = ranked(counts(text)).find((w) => !used.includes(w)) ?? 'interlude';
    made.push({ heading: capitalized(word), text });
  }
  return { ...story, chapters: made };
}

/** A script for two voices, and how long it takes to read at 150 words a minute. */
function podcast(story) {
  const script = [
    `HOST: Welcome to Family Stories. Today: "${story.title}", a story of ${story.tags.join(', ')}.`,
    ...story.chapters.flatMap((c, i) => [`HOST: Chapter ${i + 1}, ${c.heading}.`, `NARRATOR: ${c.text}`]),
    `HOST: The line we keep coming back to: "${story.quote}"`,
    `HOST: In short: ${story.summary}`,
  ];
  const seconds = Math.round((words(script.join(' ')).length / 150) * 60);
  return { ...story, podcast: { script, seconds } };
}

// Each task's one step reads the story from the run's input.
const tasks = { transcribe, embed, tags, quote, title, summary, chapters, podcast };
serve(Object.fromEntries(Object.entries(tasks).map(([name, task]) => [name, (request) => task(request.input)])));
