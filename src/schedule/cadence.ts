/**
 * How often a METERING_SCHEDULE expression ticks: the longest gap between two ticks, so configuration can
 * refuse a schedule too slow to seal and send every hour inside AWS's six-hour window. The expression is read
 * by node-cron itself (its parser for the times of day, its matcher for the days), so the answer is about the
 * schedule the scheduler will actually run.
 */
import { createTask, parse } from 'node-cron';
import { HOUR_MS } from '../clock.js';

const DAY_MS = 24 * HOUR_MS;

/**
 * Days over which the calendar fields are checked: four years hold every combination of month length, leap
 * day and weekday that can leave a day without ticks.
 */
const CALENDAR_DAYS = 4 * 365 + 1;

/** Where the calendar check starts: a Monday, 1 January, three years before a leap day. */
const CALENDAR_START_MS = Date.UTC(2029, 0, 1);

/**
 * The longest interval between consecutive ticks of `expression` (UTC), in milliseconds; `Infinity` when it
 * never ticks. The expression must be valid for node-cron.
 */
export function longestTickGapMs(expression: string): number {
  const fields = parse(expression);
  const times = new Set<number>();
  for (const hour of fields.hour)
    for (const minute of fields.minute)
      for (const second of fields.second) times.add(((hour * 60 + minute) * 60 + second) * 1000);
  const ofDay = [...times].sort((a, b) => a - b);
  if (ofDay.length === 0) return Infinity;
  let gapMs = ofDay[0] + DAY_MS - ofDay[ofDay.length - 1];
  for (let i = 1; i < ofDay.length; i++) gapMs = Math.max(gapMs, ofDay[i] - ofDay[i - 1]);
  if (everyDay(fields)) return gapMs;

  // Some days may have no ticks: find the longest run between two days that have them.
  const task = createTask(expression, () => undefined, { timezone: 'UTC' });
  try {
    let previousDay: number | undefined;
    let ticking = 0;
    for (let day = 0; day < CALENDAR_DAYS; day++) {
      if (!task.match(new Date(CALENDAR_START_MS + day * DAY_MS + ofDay[0]))) continue;
      if (previousDay !== undefined) {
        const between = (day - previousDay) * DAY_MS - ofDay[ofDay.length - 1] + ofDay[0];
        gapMs = Math.max(gapMs, between);
      }
      ticking++;
      previousDay = day;
    }
    // No day, or a single day in four years (29 February), has ticks: as good as never.
    return ticking < 2 ? Infinity : gapMs;
  } finally {
    void task.destroy(); // Synchronous for a task that was never started; the promise carries nothing.
  }
}

/** True when the day fields select every day (every day of the month, every month, every weekday). */
function everyDay(fields: ReturnType<typeof parse>): boolean {
  return (
    fields.dayOfMonth.length === 31 &&
    fields.dayOfMonth.every((d) => typeof d === 'number') &&
    fields.month.length === 12 &&
    fields.dayOfWeek.length >= 7 &&
    fields.dayOfWeek.every((d) => typeof d === 'number')
  );
}
