#!/usr/bin/env node
// The orchestrators' own steps: what family.story makes of its eight children, and what
// family.batch makes of its stories. Both read the children's outcomes from the step
// request's `outputs` (docs/tasks.md, "Child runs").

const { serve } = require('./lib.js');

/** The story as the chain left it (the last child's output), and which child run did what. */
function assemble({ outputs }) {
  const story = outputs.podcast.output;
  const runs = Object.fromEntries(
    Object.values(outputs).filter((o) => o && o.task).map((o) => [o.task, o.run_id]),
  );
  return {
    id: story.id,
    title: story.title,
    words: story.words,
    sentences: story.sentences.length,
    vocabulary: story.vocabulary,
    tags: story.tags,
    quote: story.quote,
    summary: story.summary,
    chapters: story.chapters.map((c) => c.heading),
    podcast: story.podcast,
    runs,
  };
}

/** The stories that were made, and the ones that were not with the reason. */
function collect({ input, outputs }) {
  const join = outputs.tell_each;
  const made = [];
  const failed = [];
  join.children.forEach((child, i) => {
    const id = input.stories[i].id;
    if (child.status === 'succeeded') {
      made.push({ id, title: child.output.title, podcast_seconds: child.output.podcast.seconds });
    } else {
      failed.push({ id, status: child.status, error: child.error ?? null });
    }
  });
  return { made, failed };
}

serve({ assemble, collect });
